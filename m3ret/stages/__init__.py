"""One module per dvc stage, each with the one function (`run`) that the CLI, dvc, the Prefect flows and tests call.

Stages are glue: they read a stage's inputs where params.yaml puts them, call the layers below (data, models,
train, index, eval, monitoring) and write the stage's outputs and its report under reports/.
"""
