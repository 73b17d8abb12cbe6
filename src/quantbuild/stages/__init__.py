"""One module per DVC stage, each the stage's whole entry: dvc.yaml's `quantbuild stage NAME [VARIANT]` runs
`python -m quantbuild.stages.NAME [VARIANT]` in the stage's environment (quantbuild._runner).

Each module holds `run(...)` (a pure function the façade re-exports) and `main()` (argument parsing and the
one-line error reporting of quantbuild._stage). Nothing here imports another stage's module, so the code a
stage depends on is exactly what its module imports: its code identity in .quantbuild/code.yaml (quantbuild._codeid).
"""
