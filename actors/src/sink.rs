//! A transport end that forwards reply updates into a tokio channel.
//!
//! Used by the console transport, tests and benchmarks: anything that wants to consume
//! [`ReplyUpdate`]s from async code rather than implement an actor.

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::messages::ReplyUpdate;

pub struct ChannelSink {
    tx: mpsc::UnboundedSender<ReplyUpdate>,
}

impl ChannelSink {
    /// Starts the sink on the current arbiter and returns its recipient and the receiving end.
    pub fn start() -> (Recipient<ReplyUpdate>, mpsc::UnboundedReceiver<ReplyUpdate>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChannelSink { tx }.start().recipient(), rx)
    }

    /// Like [`ChannelSink::start`], on a given arbiter (from code outside any arbiter, such as a
    /// plain tokio task).
    pub fn start_in(
        arbiter: &ArbiterHandle,
    ) -> (Recipient<ReplyUpdate>, mpsc::UnboundedReceiver<ReplyUpdate>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let addr = ChannelSink::start_in_arbiter(arbiter, move |_| ChannelSink { tx });
        (addr.recipient(), rx)
    }
}

impl Actor for ChannelSink {
    type Context = Context<Self>;
}

impl Handler<ReplyUpdate> for ChannelSink {
    type Result = ();

    fn handle(&mut self, msg: ReplyUpdate, ctx: &mut Self::Context) {
        if self.tx.send(msg).is_err() {
            // Nobody is listening any more.
            ctx.stop();
        }
    }
}
