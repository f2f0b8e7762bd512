"""Schedulers: where a run's processes are started when this machine does not start them itself. Slurm today.

    script.py   the batch scripts `submit` writes (job.sbatch IS the batch step, in plain bash: it needs only
                bash and Slurm's commands on the host, whatever runs inside the container), their #SBATCH lines,
                the srun line with the container's flags, how the head node and port are found
    resources.py  the allocation as the batch step sees it, the nodes' description (sinfo), resource defaults
    node.py     the per-node program inside each srun task: its rank, the job's endpoint, then the same launch as
                a local run (no Slurm command is called: a container image rarely ships Slurm)
    jobs.py     every job of a run, recorded in RUN/jobs.tsv; Slurm's own word on them (squeue, scontrol, sacct);
                `tunelaunch logs` and `tunelaunch cancel`
    submit.py   the one door the CLI uses: write the scripts into a run folder, sbatch them, the dry run's text

Nothing here is a distributed backend: the processes on each node are started by launcher.distributed, exactly as
on a single machine.
"""
