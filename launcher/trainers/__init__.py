"""One module per training method, each with `train(cfg, run_dir, resume_from) -> metrics`; the table of
methods (what data each takes, what it reads) is launcher.methods."""
