"""DVC stage `card` (delivered by issue #6; the stage name and its paths are fixed by dvc.yaml)."""
import sys

from quantbuild import api
from quantbuild._stage import run_stage

if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "base"
    run_stage("card", lambda: api.not_implemented(f"card@{target}", "issue #6"))
