"""DVC stage `quantize@<variant>`: variants.<variant> + base model + calibration -> build/variants/<variant>/."""
import sys

from quantbuild import api
from quantbuild._stage import run_stage

if __name__ == "__main__":
    name = sys.argv[1]
    run_stage(f"quantize@{name}", lambda: api.quantize(name, "params.yaml"))
