"""DVC stages `evaluate_base` and `evaluate@<variant>`: eval.* -> build/eval/<model>/."""
import sys

from quantbuild import api
from quantbuild._stage import run_stage

if __name__ == "__main__":  # vLLM starts its engine with spawn: the guard is required
    name = sys.argv[1]
    run_stage(f"evaluate@{name}", lambda: api.evaluate(name, "params.yaml"))
