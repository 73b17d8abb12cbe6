"""DVC stage `quantize` (delivered by issue #4; the stage name and its paths are fixed by dvc.yaml)."""
import sys

from quantbuild import api
from quantbuild._stage import run_stage

if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "base"
    run_stage("quantize", lambda: api.not_implemented(f"quantize@{target}", "issue #4"))
