"""DVC stage `fetch`: base.* -> build/base/model (safetensors) + build/base/fetch.json."""
import sys

from quantbuild import api
from quantbuild._stage import run_stage

if __name__ == "__main__":
    out_dir, record = sys.argv[1:3]
    run_stage("fetch", lambda: api.fetch("params.yaml", out_dir, record))
