"""Configuration of the data pipeline (the ``data`` section of the run config).

Kept import-light (no ``datasets``/``transformers``/``torch``) so the main config module can
import it. Units are in the names: ``*_tokens`` count tokenizer tokens, ``*_rows`` count rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

#: The data formats :mod:`uniapl_mcore.data.formats` reads (kept in sync by a test).
FORMAT_NAMES = ("ifeval", "ifbench", "argilla", "open_instruct", "autoif", "multi_if",
                "unified")
FileType = Literal["auto", "json", "parquet", "csv"]


def _check(condition: bool, field_name: str, message: str) -> None:
    """``uniapl_mcore.config.check``, imported late (that module imports this one)."""
    from uniapl_mcore.config import check

    check(condition, field_name, message)


@dataclass
class DataSourceConfig:
    """One dataset to read.

    Attributes:
        path: a local file, directory or glob (``.jsonl``/``.json``/``.parquet``/``.csv``), or a
            Hugging Face Hub dataset name (used only when no local path matches; needs a
            network).
        format: the record shape: ``ifeval``, ``ifbench``, ``argilla``, ``open_instruct``,
            ``autoif``, ``multi_if`` or ``unified`` (see :mod:`uniapl_mcore.data.formats`).
        name: Hub configuration name (e.g. ``filtered`` for argilla/ifeval-like-data).
        hub_split: the Hub split to load.
        split: the split label the rows get (``train``, ``validation``, ``test``).
        use: which pool the rows feed: ``sft`` (need a target response), ``pref`` (need a
            verifier), ``both``, or ``eval`` (held-out evaluation rows).
        teacher_files: JSONL files of ``{"id", "text", "model"?, "sampling"?}`` joined to rows
            by unified row id (several per id allowed).
        max_rows: keep only the first N normalised rows (None: all).
        file_type: reader for local files; ``auto`` picks by extension.
    """

    path: str = ""
    format: Literal["ifeval", "ifbench", "argilla", "open_instruct", "autoif", "multi_if",
                    "unified"] = "unified"
    name: str | None = None
    hub_split: str = "train"
    split: Literal["train", "validation", "test"] = "train"
    use: Literal["sft", "pref", "both", "eval"] = "both"
    teacher_files: list[str] = field(default_factory=list)
    max_rows: int | None = None
    file_type: FileType = "auto"

    def __post_init__(self) -> None:
        _check(bool(self.path), "path", "must name a local file/directory or a Hub dataset")
        _check(self.format in FORMAT_NAMES, "format",
               f"must be one of {', '.join(FORMAT_NAMES)}; got {self.format!r}")
        _check(self.max_rows is None or self.max_rows > 0, "max_rows", "must be > 0 when set")

    @property
    def feeds_sft(self) -> bool:
        return self.use in ("sft", "both")

    @property
    def feeds_pref(self) -> bool:
        return self.use in ("pref", "both")


@dataclass
class ToyTaskConfig:
    """The embedded synthetic instruction-following task (used when ``sources`` is empty).

    Attributes:
        dir: where it is built (None: ``$UNIAPL_CACHE`` or ``~/.cache/uniapl_mcore``, in a
            folder named by the generator version and these settings). Built on first use.
        num_train_rows / num_eval_rows: rows in the training and held-out splits.
        seed: generator seed (the whole build is a deterministic function of the settings).
        vocab_size: tokens in the tiny byte-level BPE tokenizer (>= 262).
        max_constraints: most constraints per prompt (1..3).
    """

    dir: str | None = None
    num_train_rows: int = 2000
    num_eval_rows: int = 200
    seed: int = 0
    vocab_size: int = 512
    max_constraints: int = 3

    def __post_init__(self) -> None:
        _check(self.num_train_rows > 0, "num_train_rows", "must be > 0")
        _check(self.num_eval_rows >= 0, "num_eval_rows", "must be >= 0")
        _check(self.vocab_size >= 262, "vocab_size", "must be >= 262 (256 bytes + specials)")
        _check(1 <= self.max_constraints <= 3, "max_constraints", "must be in 1..3")


@dataclass
class DataConfig:
    """The data pipeline: sources, templating, truncation, mixing and micro-batch size.

    Attributes:
        sources: training datasets; empty means the embedded toy task.
        eval_sources: held-out evaluation datasets (the toy task's own held-out split is
            used when both lists are empty).
        toy: the embedded toy task.
        tokenizer: local Hugging Face tokenizer directory (None: the toy task's tokenizer).
            Its own chat template renders prompts.
        enable_thinking: passed to the chat template (Qwen3: False appends the empty think
            block to the generation prompt).
        think_prefix: the response prefix that must end every rendered generation prompt
            (appended when the template does not emit it); it is prompt, so masked out of
            the SFT loss. "" disables (base-model templates).
        end_of_turn_token: appended to SFT targets and counted in the loss (must be one
            token of the tokenizer).
        sft_target: SFT target response: ``teacher`` (first teacher response) or
            ``reference`` (the dataset's ground truth).
        sft_target_fallback: use the other kind when the chosen one is missing.
        max_prompt_tokens: a longer rendered prompt is a bad row.
        max_response_tokens: longest SFT target, end-of-turn token included.
        truncation: an SFT target over ``max_response_tokens``: ``truncate`` it (the end of
            turn is then lost) or ``drop`` the row from the SFT pool. Counts are reported.
        on_bad_row: ``fail`` at the first bad row (error names file, row and reason) or
            ``skip`` it and count it.
        expert_fraction: α, the share of SFT rows in each global batch (the rest are
            preference rows); the long-run share is exact.
        micro_batch_tokens: token budget of one training micro-batch: the trainer groups a
            step's rows so that rows × padded width stays within it (pipeline parallel
            size 1; see :mod:`uniapl_mcore.trainer.experience`).
        pad_to_multiple_of: micro-batch widths (tokens) are rounded up to a multiple of this
            (16 for FP8 GEMMs).
        shuffle: shuffle each pool every epoch (seeded); False keeps file order.
        cache_dir: ``datasets`` cache directory (None: its default).
        num_proc: worker processes for normalisation/tokenisation maps (None: in-process).
    """

    #: keys that were removed, with what to do instead (read by ``config.build_dataclass``)
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "packing": "the trainer packs each step's rows into micro-batches of at most "
                   "data.micro_batch_tokens padded tokens itself; delete the key"}

    sources: list[DataSourceConfig] = field(default_factory=list)
    eval_sources: list[DataSourceConfig] = field(default_factory=list)
    toy: ToyTaskConfig = field(default_factory=ToyTaskConfig)
    tokenizer: str | None = None
    enable_thinking: bool = False
    think_prefix: str = "<think>\n\n</think>\n\n"
    end_of_turn_token: str = "<|im_end|>"
    sft_target: Literal["teacher", "reference"] = "teacher"
    sft_target_fallback: bool = True
    max_prompt_tokens: int = 1024
    max_response_tokens: int = 4096
    truncation: Literal["truncate", "drop"] = "truncate"
    on_bad_row: Literal["fail", "skip"] = "fail"
    expert_fraction: float = 0.2
    micro_batch_tokens: int = 8192
    pad_to_multiple_of: int = 1
    shuffle: bool = True
    cache_dir: str | None = None
    num_proc: int | None = None

    def __post_init__(self) -> None:
        self.sources = [_as_source(s) for s in self.sources]
        self.eval_sources = [_as_source(s) for s in self.eval_sources]
        if isinstance(self.toy, dict):
            self.toy = ToyTaskConfig(**self.toy)
        for name in ("max_prompt_tokens", "max_response_tokens", "micro_batch_tokens",
                     "pad_to_multiple_of"):
            _check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        _check(0.0 <= self.expert_fraction <= 1.0, "expert_fraction",
               f"must be in [0, 1], got {self.expert_fraction}")
        _check(self.max_prompt_tokens + self.max_response_tokens <= self.micro_batch_tokens + 1,
               "micro_batch_tokens",
               f"{self.micro_batch_tokens} cannot hold the longest row "
               f"(max_prompt_tokens + max_response_tokens - 1 = "
               f"{self.max_prompt_tokens + self.max_response_tokens - 1} tokens)")
        _check(self.num_proc is None or self.num_proc >= 1, "num_proc", "must be >= 1 when set")
        _check(bool(self.end_of_turn_token), "end_of_turn_token", "must be non-empty")
        for i, src in enumerate(self.sources):
            _check(src.use != "eval", f"sources[{i}].use",
                   "training sources feed sft/pref/both; put evaluation data in eval_sources")

    @property
    def uses_toy_task(self) -> bool:
        """Whether the embedded toy task supplies the rows."""
        return not self.sources


def _as_source(value: Any) -> DataSourceConfig:
    return DataSourceConfig(**value) if isinstance(value, dict) else value
