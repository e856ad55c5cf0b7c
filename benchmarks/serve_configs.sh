#!/usr/bin/env bash
# benchmarks/serve.py against the demo service in three configurations, one after the other:
#   lite            params.yaml as it is (Milvus Lite file, the encoder on torch's default threads)
#   lite-1thread    serve.encoder_threads: 1
#   server-1thread  the same, with the index on a Milvus 2.3.5 standalone server (the dev extra's `milvus-server`,
#                   started by tests/index/milvus_standalone.py on 127.0.0.1; `m3ret index` + `m3ret evaluate` build
#                   and publish the demo collection there)
# Run in a repository where `dvc repro` and `m3ret-serving import` have run, with a quiet machine:
#   M3RET_MODEL_TAG=m3ret-encoder:<version> M3RET_TOKEN=$(cat token.txt) bash benchmarks/serve_configs.sh OUT_DIR
# Each configuration's table goes to OUT_DIR/<name>.txt, with the load average before and after. `m3ret evaluate`
# rewrites reports/ (run it in a scratch clone).
set -euo pipefail
out=${1:?usage: serve_configs.sh OUT_DIR}
mkdir -p "$out"
: "${M3RET_MODEL_TAG:?set M3RET_MODEL_TAG}" "${M3RET_TOKEN:?set M3RET_TOKEN}"
export BENTOML_DO_NOT_TRACK=True PYTHONPATH=$PWD
port=3011
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
[ -f ihc_small.jpg ] || python -c "from PIL import Image; Image.open('data/demo/images/pathology_ihc.png').convert('RGB').resize((256, 256)).save('ihc_small.jpg', quality=90)"
sed 's/^\(  encoder_threads:\) 0 /\1 1 /' params.yaml > "$work/params-1thread.yaml"
grep -q '^  encoder_threads: 1 ' "$work/params-1thread.yaml"

bench() {  # $1: configuration name; the environment chooses the params file and the index
  bentoml serve serving.service:Retrieval --host 127.0.0.1 --port $port > "$out/$1.serve.log" 2>&1 &
  local service=$!
  for _ in $(seq 180); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/readyz)" = 200 ] && break
    sleep 1
  done
  {
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    python benchmarks/serve.py http://127.0.0.1:$port ihc_small.jpg data/demo/images/fundus_retina.png
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  } > "$out/$1.txt"
  kill $service && wait $service || true
  sleep 5
}

bench lite
M3RET_PARAMS=$work/params-1thread.yaml bench lite-1thread

python - "$work/milvus" <<'EOF' &
import signal, sys, time
from pathlib import Path
sys.path.insert(0, "tests/index")
from milvus_standalone import MilvusStandalone
server = MilvusStandalone(Path(sys.argv[1]))
signal.signal(signal.SIGTERM, lambda *_: (server.stop(), sys.exit(0)))
uri = server.start()
Path(sys.argv[1], "uri").write_text(uri)
time.sleep(7200)
EOF
milvus=$!
for _ in $(seq 180); do [ -f "$work/milvus/uri" ] && break; sleep 1; done
export M3RET_INDEX_URI=$(cat "$work/milvus/uri")
m3ret index > "$out/server-index.log" 2>&1
m3ret evaluate >> "$out/server-index.log" 2>&1  # evaluation through the server's collection; its gate publishes it
M3RET_PARAMS=$work/params-1thread.yaml bench server-1thread
kill $milvus && wait $milvus || true
