"""One module per DVC stage, each the stage's whole entry: `stages/run ENV -m quantbuild.stages.<stage> [ARGS]`.

Each module holds `run(...)` (a pure function the façade re-exports) and `main()` (argument parsing and the
one-line error reporting of quantbuild._stage). Nothing here imports another stage's module, so the code a
stage depends on is exactly what its module imports (tests/test_stage_deps.py checks dvc.yaml against it).
"""
