"""The UniAPL training run's configuration: the policy's model, parallel layout and optimizer,
the step schedule and checkpoints, the objective, data, rewards, rollouts, discriminator,
reference model, evaluation, logging and stages.

:class:`UniaplConfig` is composed of sections that live with their components
(``models.config``, ``runtime.layout``, ``megatron.config``, ``losses.config``, …); the
trainer's own sections (:class:`TrainConfig`, :class:`CheckpointConfig`) are here. Each
component takes only its own section. Its defaults are the embedded CPU run (toy task, tiny policy,
tiny trainable discriminator) that ``uniapl train`` with no config starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from uniapl_mcore.config import check
from uniapl_mcore.data.config import DataConfig, ToyTaskConfig
from uniapl_mcore.discriminator.config import DiscriminatorConfig
from uniapl_mcore.losses.config import (
    ADVERSARIAL_OBJECTIVES,
    OBJECTIVES,
    REMOVED_OBJECTIVES,
    REWARD_INJECTIONS,
    LossConfig,
)
from uniapl_mcore.megatron.config import OptimizerConfig, check_fast_path, check_layout
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.rewards.config import RewardConfig
from uniapl_mcore.rollout.config import RolloutConfig, SamplingConfig
from uniapl_mcore.runtime.layout import ParallelConfig

#: Objectives whose steps need student rollouts of PREF prompts (the GRPO slice).
RL_OBJECTIVES = ("grpo", "a_grpo", "uniapl", "chord", "a_chord")
#: Objectives whose global batch holds SFT rows (expert demonstrations).
SFT_OBJECTIVES = ("sft", "a_sft", "uniapl", "chord", "a_chord")


@dataclass
class TrainConfig:
    """Step count, seed, the rows per micro-batch of the common-width layout (pipeline
    parallel runs; without PP the trainer packs micro-batches by ``data.micro_batch_tokens``
    and evaluation batches ``micro_batch_size`` rows), and the PPO update schedule.

    ``mini_batches`` M: optimizer updates per rollout batch (the step's rows are split into
    M mini-batches, each its own loss with its own global denominators); ``epochs`` E: passes
    over the step's mini-batches. A step makes M·E optimizer updates; with M·E > 1 the
    importance ratio π_θ / π_old (π_old: the weights when the step began) leaves 1 after the
    first update and the PPO clip acts (``specs/objective.md`` §3.9).
    """

    max_steps: int = 80
    seed: int = 1234
    micro_batch_size: int = 2
    mini_batches: int = 1
    epochs: int = 1

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "mini_batches", "epochs"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per training step: M · E."""
        return self.mini_batches * self.epochs


@dataclass
class CheckpointConfig:
    """Training-state checkpoints under ``<run_dir>/checkpoints``.

    Each one's ``policy/`` carries ``hf/`` (config.json, tokenizer), so
    ``tools/convert_checkpoint.py mcore-to-hf`` turns it into a Hugging Face model.
    ``export_hf``: at the end of training also write the trained policy as a Hugging Face
    model (safetensors + config + tokenizer) to ``<run_dir>/hf``.
    """

    save_interval_steps: int = 0
    keep_last: int = 2
    save_at_end: bool = True
    export_hf: bool = False

    def __post_init__(self) -> None:
        check(self.save_interval_steps >= 0, "save_interval_steps", "must be >= 0 (0: never)")
        check(self.keep_last >= 1, "keep_last", "must be >= 1")


def _toy_policy() -> ModelConfig:
    """The embedded default policy: a tiny Qwen3-style model for the toy task's tokenizer."""
    return ModelConfig(num_layers=4, hidden_size=128, ffn_hidden_size=384,
                       num_attention_heads=4, num_query_groups=2, head_dim=32, vocab_size=512,
                       max_position_embeddings=1024)


def _toy_train() -> TrainConfig:
    return TrainConfig(max_steps=300, seed=1234, micro_batch_size=8)


def _toy_rollout() -> RolloutConfig:
    return RolloutConfig(samples_per_prompt=4, dtype="float32", max_batch_rows=64,
                         requests_per_call=16,
                         sampling=SamplingConfig(temperature=1.0, max_new_tokens=192))


@dataclass
class StageConfig:
    """One stage of a staged pipeline (e.g. SFT → A-GRPO), run one after another.

    Attributes:
        objective: the stage's loss (a ``loss.objective`` value).
        steps: optimizer steps in the stage.
        lr: peak learning rate (None: ``optimizer.lr``).
        warmup_steps: LR warm-up of the stage (None: ``optimizer.warmup_steps``).
        name: label in logs (default ``stage<i>-<objective>``).

    Each stage starts from the previous stage's weights with a fresh optimizer and LR
    schedule; the KL reference is reset to the weights at the stage's start.
    """

    #: refused objective names, with the reason (read by ``config.build_dataclass``)
    REMOVED_VALUES: ClassVar[dict[str, dict[str, str]]] = {"objective": REMOVED_OBJECTIVES}

    objective: str = "sft"
    steps: int = 1
    lr: float | None = None
    warmup_steps: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        check(self.objective in OBJECTIVES, "objective",
              f"must be one of {', '.join(map(repr, OBJECTIVES))}; got {self.objective!r}")
        check(self.steps > 0, "steps", f"must be > 0, got {self.steps}")
        check(self.lr is None or self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps",
              "must be >= 0")


@dataclass
class ReferenceConfig:
    """The frozen KL reference π_ref (the policy at the start of its stage).

    ``offload``: keep its weights in host memory between uses (GPU runs).
    """

    offload: bool = False


@dataclass
class EvalConfig:
    """Held-out evaluation (greedy generation on the eval rows, verified strictly).

    Attributes:
        interval_steps: evaluate every N optimizer steps (0: only at start and end).
        at_start: evaluate the initial model (step 0) for the learning curve's baseline.
        max_prompts: evaluate on the first N held-out rows (None: all).
        max_new_tokens: generation budget per response (tokens).
        save_generations: write ``<run_dir>/generations/step_NNNNNN.jsonl``.
    """

    interval_steps: int = 100
    at_start: bool = True
    max_prompts: int | None = 100
    max_new_tokens: int = 192
    save_generations: bool = True

    def __post_init__(self) -> None:
        check(self.interval_steps >= 0, "interval_steps", "must be >= 0")
        check(self.max_prompts is None or self.max_prompts > 0, "max_prompts", "must be > 0")
        check(self.max_new_tokens > 0, "max_new_tokens", "must be > 0")


@dataclass
class LoggingConfig:
    """Where metrics go besides ``<run_dir>/metrics.jsonl``.

    ``progress_bar``: ``auto`` (only on a terminal), ``on`` or ``off`` (YAML's boolean
    spellings ``on``/``off``/``yes``/``no``/``true``/``false`` read as on/off); ``tensorboard``:
    event files under ``<run_dir>/tensorboard``; ``wandb_project``: log to Weights & Biases
    when set (needs the ``wandb`` package and a login).
    """

    progress_bar: Literal["auto", "on", "off"] = "auto"
    tensorboard: bool = True
    wandb_project: str | None = None
    wandb_run_name: str | None = None


@dataclass
class UniaplConfig:
    """A whole UniAPL training run (see the module doc)."""

    model: ModelConfig = field(default_factory=_toy_policy)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=3e-3, warmup_steps=10,
                                                lr_decay_style="cosine", min_lr=3e-4))
    train: TrainConfig = field(default_factory=_toy_train)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(
        objective="uniapl", alpha=0.5, lambda_adv=1e-2, adv_on_sft_rows=False))
    data: DataConfig = field(default_factory=lambda: DataConfig(
        expert_fraction=0.875, max_prompt_tokens=256, max_response_tokens=256,
        micro_batch_tokens=1024, toy=ToyTaskConfig(max_constraints=2)))
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(num_workers=0))
    rollout: RolloutConfig = field(default_factory=_toy_rollout)
    discriminator: DiscriminatorConfig = field(
        default_factory=lambda: DiscriminatorConfig(update_every_steps=4))
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stages: list[StageConfig] = field(default_factory=list)
    #: prompts drawn per optimizer step (SFT rows + PREF prompts, global over DP ranks)
    prompts_per_step: int = 16
    #: initial policy weights: a torch_dist checkpoint (``tools/convert_checkpoint.py``);
    #: None starts from a random initialisation (the embedded toy run)
    init_checkpoint: str | None = None
    #: Ray cluster to join ("auto": this node's); None starts a local Ray instance
    ray_address: str | None = None
    #: student rollouts per SFT prompt for L_ADV|SFT (None: rollout.samples_per_prompt)
    sft_samples_per_prompt: int | None = None

    def __post_init__(self) -> None:
        check_layout(self.model, self.parallel)
        check_fast_path(self.model, self.parallel, self.optimizer)
        self.stages = [StageConfig(**s) if isinstance(s, dict) else s for s in self.stages]
        check(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        check(self.sft_samples_per_prompt is None or self.sft_samples_per_prompt >= 1,
              "sft_samples_per_prompt", "must be >= 1")
        check(self.train.mini_batches <= self.prompts_per_step, "train.mini_batches",
              f"{self.train.mini_batches} mini-batches cannot each get a prompt of the "
              f"{self.prompts_per_step} drawn per step (prompts_per_step)")
        longest = self.data.max_prompt_tokens + max(self.data.max_response_tokens,
                                                    self.rollout.sampling.max_new_tokens)
        check(longest <= self.model.max_position_embeddings, "model.max_position_embeddings",
              f"{self.model.max_position_embeddings} cannot hold data.max_prompt_tokens + the "
              f"longest response = {longest} tokens")
        # the trainer packs each step's rows into micro-batches of at most this many padded
        # positions (pipeline parallel size 1); the longest row must fit in one
        check(longest - 1 <= self.data.micro_batch_tokens, "data.micro_batch_tokens",
              f"{self.data.micro_batch_tokens} cannot hold the longest row (data."
              f"max_prompt_tokens + the longest response - 1 = {longest - 1} tokens)")
        check(not self.loss.kl_in_reward, "loss.kl_in_reward",
              "not supported by the online trainer (it applies the KL in the loss); set false")
        check(not self.model.fp8.enabled or self.data.pad_to_multiple_of % 16 == 0,
              "data.pad_to_multiple_of", f"FP8 GEMMs need token counts in multiples of 16: "
                                         f"set 16 (got {self.data.pad_to_multiple_of})")
        self._check_parallel()
        for section, parallel in (("parallel", self.parallel),
                                  ("discriminator.parallel", self.discriminator.parallel)):
            check(not parallel.overlap_param_gather, f"{section}.overlap_param_gather",
                  "not supported by the online trainer: it reads the weights right after each "
                  "optimizer step (weight sync, checkpoints), before a forward pass would "
                  "finish the deferred all-gather; use overlap_grad_reduce alone")
        self._check_adv_injection()
        for stage in self.resolved_stages():
            check(stage.objective != "a_sft" or stage.loss.resolved_adv_on_sft_rows,
                  "loss.adv_on_sft_rows", "a_sft's adversarial term acts on student rollouts "
                                          "of the SFT prompts; set it to true (or null)")
        adversarial = any(s.needs_discriminator for s in self.resolved_stages())
        check(not adversarial or self.discriminator.enabled, "discriminator.role",
              "the objective has an adversarial term; the discriminator cannot be 'none'")
        check(self.rollout.samples_per_prompt >= 2 or not self.any_rl,
              "rollout.samples_per_prompt",
              "GRPO needs at least 2 samples per prompt (group baseline)")

    def _check_parallel(self) -> None:
        """Layouts the trainer builds groups for but does not use: context parallelism (no
        sequence is split over CP ranks) and the discriminator's expert parallelism (it runs
        one TP × PP replica)."""
        for section, parallel in (("parallel", self.parallel),
                                  ("discriminator.parallel", self.discriminator.parallel)):
            check(parallel.context_parallel_size == 1, f"{section}.context_parallel_size",
                  f"{parallel.context_parallel_size}: the trainer does not split sequences over "
                  "context-parallel ranks (each would compute every token); use 1")
        ep = self.discriminator.parallel.expert_parallel_size
        check(ep == 1, "discriminator.parallel.expert_parallel_size",
              f"{ep}: the discriminator runs one TP × PP replica; use 1")

    def _check_adv_injection(self) -> None:
        """``loss.adv_injection`` other than ``loss`` must act in some stage: it needs an
        adversarial objective, and the reward injections one with rewarded rollouts."""
        injection = self.loss.adv_injection
        if injection == "loss":
            return
        objectives = [s.objective for s in self.resolved_stages()]
        check("a_sft" not in objectives or injection not in REWARD_INJECTIONS,
              "loss.adv_injection", f"{injection!r} adds the discriminator signal to verifiable "
                                    "rewards, which a_sft (no rewarded rollouts) does not have; "
                                    "use 'loss' or 'advantage'")
        usable = [o for o in ADVERSARIAL_OBJECTIVES
                  if injection not in REWARD_INJECTIONS or o != "a_sft"]
        check(any(o in usable for o in objectives), "loss.adv_injection",
              f"{injection!r} needs an adversarial objective ({', '.join(usable)}); with "
              f"{', '.join(objectives)} no discriminator runs and it would change nothing")

    def check_world_size(self, world_size: int) -> None:
        """Checks that need the world size; call before starting process groups."""
        self.parallel.check_world_size(world_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ stages

    def resolved_stages(self) -> list[ResolvedStage]:
        """The stages to run: ``stages``, or one stage of ``loss.objective`` for
        ``train.max_steps`` steps at ``optimizer.lr``."""
        specs = self.stages or [StageConfig(objective=self.loss.objective,
                                            steps=self.train.max_steps)]
        out, start = [], 0
        for index, spec in enumerate(specs):
            loss = replace(self.loss, objective=spec.objective)
            optim = replace(self.optimizer,
                            lr=spec.lr if spec.lr is not None else self.optimizer.lr,
                            min_lr=min(self.optimizer.min_lr,
                                       spec.lr if spec.lr is not None else self.optimizer.lr),
                            warmup_steps=spec.warmup_steps if spec.warmup_steps is not None
                            else self.optimizer.warmup_steps)
            name = spec.name or f"stage{index}-{spec.objective}"
            out.append(ResolvedStage(index, name, start, spec.steps, loss, optim))
            start += spec.steps
        return out

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.resolved_stages())

    @property
    def any_rl(self) -> bool:
        return any(s.loss.objective in RL_OBJECTIVES or s.needs_sft_rollouts
                   for s in self.resolved_stages())


@dataclass(frozen=True)
class ResolvedStage:
    """A stage with its global step range and its own loss / optimizer sections."""

    index: int
    name: str
    start_step: int
    steps: int
    loss: LossConfig
    optimizer: OptimizerConfig

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps

    @property
    def objective(self) -> str:
        return self.loss.objective

    @property
    def has_pref(self) -> bool:
        """Whether the stage draws PREF prompts and rolls them out."""
        return self.objective in RL_OBJECTIVES

    @property
    def has_sft(self) -> bool:
        return self.objective in SFT_OBJECTIVES

    @property
    def needs_sft_rollouts(self) -> bool:
        """Whether SFT prompts get student rollouts (for L_ADV|SFT)."""
        return self.has_sft and self.loss.adversarial_on_sft_rollouts

    @property
    def needs_discriminator(self) -> bool:
        return self.loss.objective in ("a_sft", "a_grpo", "uniapl", "a_chord")

    @property
    def needs_reference(self) -> bool:
        return self.has_pref and self.loss.kl_coef > 0

    def expert_fraction(self, data_fraction: float) -> float:
        """Share of SFT rows in the stage's batches."""
        if not self.has_pref:
            return 1.0
        if not self.has_sft:
            return 0.0
        return data_fraction
