"""``uniapl train``: run training on this machine (under torchrun, or starting its own ranks)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from uniapl_mcore.config import load_config
from uniapl_mcore.trainer.config import UniaplConfig


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``uniapl train``."""
    train = subparsers.add_parser(
        "train", help="train a policy with the UniAPL objective (or a staged pipeline)",
        description="Train on this machine. Under torchrun each process runs one rank; run "
                    "plainly, it starts the processes the parallel layout needs itself. With "
                    "no --config it runs the embedded toy task (tiny policy and discriminator, "
                    "CPU). Re-running on the same --run-dir resumes from its latest checkpoint.")
    train.add_argument("--config", type=Path, help="YAML config file (default: the embedded "
                                                   "toy run)")
    train.add_argument("--run-dir", type=Path, help="output directory; re-running on the same "
                                                    "directory resumes (default: runs/<time>)")
    train.add_argument("--max-steps", type=int, help="shorthand for train.max_steps=N "
                                                     "(single-stage runs)")
    train.add_argument("--nproc-per-node", type=int,
                       help="processes per node (default when not under torchrun: TP×PP×CP)")
    train.add_argument("--nnodes", type=int, default=1, help="nodes (for --dry-run)")
    train.add_argument("--dry-run", action="store_true",
                       help="validate the config, print the parallel layout and a per-GPU "
                            "memory estimate, and exit (no hardware needed)")
    train.add_argument("--gpu-memory-gib", type=float, default=80.0,
                       help="GPU memory for the --dry-run estimate (default 80)")
    train.add_argument("--total-gpus", type=int,
                       help="GPUs in the job incl. disaggregated rollout engines (for --dry-run; "
                            "default: the trainer's)")
    train.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    train.add_argument("overrides", nargs="*", metavar="key.sub=value",
                       help="config overrides, e.g. parallel.tensor_parallel_size=2")
    train.set_defaults(func=train_command)


def _train_rank(config: UniaplConfig, run_dir: str, verbose: bool) -> None:
    """Body of one training process (torchrun rank or a process we spawned)."""
    from uniapl_mcore.log import setup_logging
    from uniapl_mcore.runtime.dist_env import DistEnv
    from uniapl_mcore.trainer.loop import run_training

    setup_logging(DistEnv.from_environ().rank, verbose)
    run_training(config, run_dir)


def train_command(args: argparse.Namespace) -> int:
    from uniapl_mcore.log import setup_logging
    from uniapl_mcore.runtime.dist_env import DistEnv

    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    config = load_config(args.config, overrides, cls=UniaplConfig)
    env = DistEnv.from_environ()
    if args.dry_run:
        from uniapl_mcore.trainer.plan import dry_run

        nproc = args.nproc_per_node or (env.world_size if env.launched else
                                        config.parallel.model_parallel_size)
        print(dry_run(config, args.nnodes * nproc, args.gpu_memory_gib,
                      total_gpus=args.total_gpus))
        return 0
    run_dir = str(args.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if env.launched:
        config.check_world_size(env.world_size)
        _train_rank(config, run_dir, args.verbose)
        return 0
    nproc = args.nproc_per_node or config.parallel.model_parallel_size
    config.check_world_size(nproc)
    setup_logging(0, args.verbose)
    print(f"uniapl train: {nproc} process(es), run directory {run_dir}", file=sys.stderr)
    if nproc == 1:
        _train_rank(config, run_dir, args.verbose)
    else:
        from uniapl_mcore.runtime.launch import DistributedRunError, run_distributed

        try:
            run_distributed(_train_rank, nproc, args=(config, run_dir, args.verbose),
                            timeout_s=30 * 24 * 3600)
        except DistributedRunError as err:  # the ranks' tracebacks, then one line
            print(err, file=sys.stderr)
            print(f"uniapl train: {err.summary}", file=sys.stderr)
            return 1
    print(f"uniapl train: done; metrics in {Path(run_dir) / 'metrics.jsonl'}, learning curve "
          f"in {Path(run_dir) / 'reward_curve.png'}", file=sys.stderr)
    return 0
