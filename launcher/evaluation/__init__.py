"""After training: lm-evaluation-harness scores of a run (`tunelaunch eval`, `eval.tasks`).

command.py  the CLI's arguments and entry point (only the standard library at the top: the parser is built on
            every call)
tasks.py    task names and task files checked before any model loads; a task file's data found beside the file
run.py      the model we load (adapter merged, training tokenizer and chat template) scored by lm-eval's
            simple_evaluate, one results file per task; `evaluate_run` for the end of training and Slurm
scores.py   reading the results back as {"task/metric": value} for `runs`, the model card and the manifest
"""
