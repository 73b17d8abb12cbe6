"""DVC stage `card@<variant>`: build/cards/<variant>/README.md from the variant's records."""
import sys

from quantbuild import api
from quantbuild._stage import run_stage

if __name__ == "__main__":
    run_stage("card", lambda: api.card(sys.argv[1]))
