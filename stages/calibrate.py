"""DVC stage `calibrate`: calibration.* + the base tokenizer -> calibration.jsonl, heldout.jsonl, stats.json."""
import sys

from quantbuild import api
from quantbuild._stage import run_stage

if __name__ == "__main__":
    model_dir, out_dir = sys.argv[1:3]
    run_stage("calibrate", lambda: api.calibrate("params.yaml", model_dir, out_dir))
