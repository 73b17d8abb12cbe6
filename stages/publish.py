"""DVC stage `publish@<variant>`: the release on the Hub at HF_ENDPOINT (a "skipped" record when disabled)."""
import sys

from quantbuild import api
from quantbuild._stage import run_stage

if __name__ == "__main__":
    run_stage("publish", lambda: api.publish(sys.argv[1]))
