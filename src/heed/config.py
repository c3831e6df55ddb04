"""Configuration: one dataclass per stage; each field holds its default, its help and its range, once.

The command-line flags are generated from these fields (``heed.commands.options``), a YAML or JSON file
(``--config``) fills them, ``KEY=VALUE`` arguments override single fields by their dotted name
(``train.lr=1e-4``), and ``validate`` collects every problem before any model loads. A trained model
saves its resolved configuration as ``run.yaml``, which ``--config`` takes back to reproduce the run.
How a field is made, checked and read (``opt``, ``check_fields``, files, overrides) is ``heed.settings``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from heed.settings import (  # noqa: F401 - re-exported: ``from heed.config import opt, validate, ...``
    DROPOUT, NON_EMPTY, NON_NEGATIVE, POSITIVE, SHARE, Check, Choices, apply_override, at_least, check_fields,
    choices_of, defaults_of, field_type, flag_name, from_dict, load_file, opt, parse_value, shown_default, validate,
)

PRECISIONS = ("auto", "bf16", "fp32")
SECONDS: Check = (lambda v: v > 0, "a number of seconds above 0")


def template_names() -> tuple[str, ...]:
    """The prompt templates by name (``heed.data.templates.TEMPLATES``), looked up when a config is
    validated or its flags are made: the registry belongs to a later stage."""
    from heed.data.templates import TEMPLATES

    return tuple(TEMPLATES)


def task_families() -> tuple[str, ...]:
    """The verifiable task families (``heed.data.tasks.FAMILIES``)."""
    from heed.data.tasks import FAMILIES

    return tuple(FAMILIES)


@dataclass
class DataConfig:
    data: str = opt("", "records: a JSON array or JSON Lines of instruction records or conversations; with the "
                    "datasets package also a Parquet, CSV or Arrow file, a save_to_disk directory, or a cached hub "
                    "dataset name", metavar="FILE")
    split: str = opt("train", "split to read from a hub dataset or a saved DatasetDict", metavar="NAME")
    data_config: str | None = opt(None, "configuration (subset) of a hub dataset", metavar="NAME")
    format: str = opt("auto", "record shape: instruction/input/output (alpaca), OpenAI 'messages' or ShareGPT "
                      "'conversations' (auto: from the file's first record)",
                      choices=("auto", "alpaca", "messages", "sharegpt"))
    system: str | None = opt(None, "system prompt for instruction records (in place of the template's "
                             "preamble); saved with the model", metavar="TEXT")
    fields: str | None = opt(None, "column names if not instruction/input/output, e.g. "
                             "'instruction=prompt,output=completion'", metavar="MAP")
    template: str | None = opt(None, "prompt template (default: a heed-trained model's own, else alpaca)",
                               choices=template_names)
    max_length: int | None = opt(None, "longest example in tokens (default: the model's context length)",
                                 check=at_least(2), metavar="N")
    overlong: str = opt("drop", "examples longer than --max-length: drop, truncate the response, or error",
                        choices=("drop", "truncate", "error"))
    train_on_prompt: bool = opt(False, "train on prompt tokens too (default: loss on the response and EOS only)")
    last_turn_only: bool = opt(False, "in conversations, train on the last assistant reply only (default: "
                               "every reply)")
    skip_invalid: bool = opt(False, "drop invalid records (counted and listed) instead of refusing the file")
    train_frac: float = opt(0.85, "share of records for training", check=SHARE)
    test_frac: float = opt(0.10, "share for the test set; the rest is validation", check=SHARE)
    shuffle: bool = opt(False, "shuffle records before splitting")
    split_seed: int = opt(123, "seed of --shuffle")
    val_file: str | None = opt(None, "validation records from this file instead of the split", metavar="FILE")
    test_file: str | None = opt(None, "test records from this file instead of the split", metavar="FILE")

    def validate(self) -> list[str]:
        problems = check_fields(self)
        if self.train_frac + self.test_frac > 1 + 1e-9:
            problems.append(f"--train-frac {self.train_frac} and --test-frac {self.test_frac} add up to more than 1")
        return problems


@dataclass
class LoraConfig:
    r: int = opt(16, "adapter rank", flag="--lora-r", check=at_least(1))
    alpha: int = opt(32, "adapter alpha (scale = alpha / r)", flag="--lora-alpha", check=POSITIVE)
    dropout: float = opt(0.05, "dropout on the adapter input", flag="--lora-dropout", check=DROPOUT)
    target_modules: list[str] | str | None = opt(
        None, "comma-separated module names, or all-linear (default: peft's choice for the model)",
        flag="--lora-targets")
    last_layers: int | None = opt(
        None, "adapt only the last N transformer layers (default: all); the layers below run forward only, "
        "with no backward pass, so a step costs less", flag="--lora-last-layers", check=at_least(1), metavar="N")

    def validate(self) -> list[str]:
        return check_fields(self)


@dataclass
class TrainConfig:
    model: str | None = opt(None, "model to finetune: hub id, directory, .gguf file or random:<preset>")
    out: str = opt("runs/heed", "output directory; must be new or empty unless --overwrite", check=NON_EMPTY)
    overwrite: bool = opt(False, "train into a non-empty --out, replacing the earlier run's outputs there")
    lr: float = opt(5e-5, "AdamW learning rate", check=POSITIVE)
    weight_decay: float = opt(0.1, "AdamW weight decay", check=NON_NEGATIVE)
    batch_size: int = opt(8, "examples per optimizer step (split into --grad-accum micro-batches)",
                          check=at_least(1))
    grad_accum: int = opt(1, "micro-batches per step", check=at_least(1))
    tokens_per_step: int | None = opt(None, "form each optimizer step from examples filling at most N tokens "
                                      "instead of --batch-size examples (for a GPU: e.g. 8192 with --pack); "
                                      "the loss stays the mean over the step's supervised tokens",
                                      check=at_least(1), metavar="N")
    group_by_length: bool = opt(False, "form batches of examples of similar length (shuffled within groups of "
                                "64 batches), so that padding costs little; with --batch-size steps. A batch "
                                "then tends to hold one kind of record: on mixed tasks random batches trained "
                                "better (--pack pads them little)")
    pack: bool = opt(False, "pack each micro-batch into padding-free rows of at most --pack-length tokens "
                     "(attention never crosses examples; same loss and gradients as padding)")
    pack_length: int = opt(256, "longest packed row (capped at --max-length; on CPU longer rows cost more "
                           "attention than they save)", check=at_least(2), metavar="N")
    epochs: int = opt(2, "passes over the training split", check=at_least(1))
    max_steps: int | None = opt(None, "stop after this many optimizer steps", check=at_least(1))
    time_budget: float | None = opt(None, "train as many steps as fit in SECONDS on this machine, at the pace of "
                                    "the run's first steps (fixed by the end of warmup, so the schedule decays "
                                    "to that count; evaluations not counted); never more than --epochs or "
                                    "--max-steps give", check=POSITIVE, metavar="SECONDS")
    eval_every: int = opt(5, "evaluate every N steps", check=at_least(1))
    eval_batches: int = opt(5, "batches of train and validation data per evaluation", check=at_least(1))
    patience: int | None = opt(None, "stop after N evaluations without validation improvement and restore "
                               "the best weights (default: off)", check=at_least(1))
    min_delta: float = opt(0.0, "smallest improvement of validation loss that counts", check=NON_NEGATIVE)
    clip: float | None = opt(1.0, "gradient-norm clipping; 0 = off", check=POSITIVE, off=0.0)
    compile: bool = opt(False, "torch.compile the model with batch shapes bucketed (widths to multiples of 64; "
                        "with --pack, full rows, row counts bucketed), so it compiles a few times, not every "
                        "step; compiling takes seconds to a minute up front")
    warmup_steps: int = opt(0, "linear warmup steps", check=NON_NEGATIVE)
    schedule: str = opt("constant", "learning-rate schedule after warmup", choices=("constant", "cosine"))
    precision: str = opt("auto", "auto: bf16 autocast on CUDA and bf16-capable CPUs, fp32 weights",
                         choices=PRECISIONS)
    seed: int = opt(123, "seed for initialisation, shuffling and dropout")
    shuffle: bool = opt(True, "keep the training order fixed", flag="--no-shuffle")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    fsdp: bool = opt(False, "under torchrun, shard weights, gradients and optimizer state over the processes "
                     "(FSDP2) instead of holding the whole model in each: for a model that does not fit one "
                     "device; in one process it trains unsharded")
    checkpoint_every: int | None = opt(None, "write a resumable checkpoint every N steps", check=at_least(1))
    sample_every_epoch: bool = opt(True, "no greedy sample at the end of each epoch", flag="--no-sample")
    generate_test: bool = opt(True, "skip responses for the test split", flag="--no-generate")
    audit: bool = opt(True, "skip the data audit (audit.json); it re-encodes every record",
                      flag="--no-audit")
    max_new_tokens: int = opt(256, "new tokens per test response at most", check=at_least(1))
    gen_batch_size: int = opt(32, "test prompts answered together (a decoding step reads every weight once "
                              "whatever the batch, so larger batches cost less per prompt)", check=at_least(1))
    lora: LoraConfig | None = opt(None, "train LoRA adapters (merged into the saved model; the adapter is "
                                  "saved on its own in adapter/ too)")
    merge: bool = opt(True, "with --lora: save only the adapter (with the tokenizer and heed.json), not the "
                      "merged model", flag="--no-merge")

    def validate(self) -> list[str]:
        problems = check_fields(self)
        if isinstance(self.grad_accum, int) and isinstance(self.batch_size, int) and \
                self.grad_accum > self.batch_size >= 1:
            problems.append(f"--grad-accum must be between 1 and --batch-size (got {self.grad_accum})")
        if self.fsdp and self.compile:
            problems.append("--fsdp does not run with --compile yet (the sharded blocks would compile their "
                            "gathers); drop one of them")
        if self.lora is not None:
            problems += self.lora.validate()
        elif self.merge is False:
            problems.append("--no-merge needs --lora (a model without adapters has nothing to merge)")
        return problems


@dataclass
class GenerateConfig:
    max_new_tokens: int = opt(256, "new tokens per response at most", check=at_least(1))
    temperature: float = opt(0.0, "0 = greedy", check=NON_NEGATIVE)
    top_k: int | None = opt(None, "sample among the k most likely tokens", check=at_least(1))
    top_p: float | None = opt(None, "nucleus sampling threshold", check=(lambda v: 0 < v <= 1, "in (0, 1]"))
    batch_size: int = opt(8, "prompts per batch", check=at_least(1))
    seed: int = opt(123, "seed for sampling")
    precision: str = opt("fp32", "fp32, or bf16 autocast (faster on CUDA and AMX CPUs; tokens may differ "
                         "slightly), or auto", choices=PRECISIONS)
    cache: str = opt("auto", "KV cache: auto (compiled on CUDA, dynamic on CPU), dynamic, static (preallocated), "
                     "or compiled (static, the decoding step compiled with torch.compile; CUDA graphs on CUDA; the "
                     "first batch pays the compile)", choices=("auto", "dynamic", "static", "compiled"))

    def validate(self) -> list[str]:
        return check_fields(self)


@dataclass
class ServeConfig:
    """``heed serve``: where it listens, how it batches, and how large a request may be."""

    host: str = opt("127.0.0.1", "address to bind: a loopback address serves this machine only, 0.0.0.0 "
                    "exposes the server")
    port: int = opt(8000, "TCP port (0: any free port)", check=(lambda v: 0 <= v <= 65535, "between 0 and 65535"))
    name: str | None = opt(None, "model name shown in /v1/models and /api/tags (default: the --model directory's name)")
    max_batch: int = opt(8, "requests decoded together in one batch at most", check=at_least(1))
    batch_wait_ms: float = opt(5.0, "how long the worker waits for more requests before decoding a batch",
                               check=NON_NEGATIVE)
    max_queue: int = opt(64, "waiting requests at most; more are refused with HTTP 503", check=at_least(1))
    max_new_tokens: int = opt(256, "cap on max_tokens / num_predict; also the default when a request sets none",
                              check=at_least(1))
    max_body_bytes: int = opt(1_000_000, "largest request body in bytes (HTTP 413 above it)", check=at_least(64))
    max_messages: int = opt(64, "most chat messages in one request", check=at_least(1))
    max_prompt_tokens: int | None = opt(None, "longest prompt in tokens (default: the model's context length "
                                        "less max_new_tokens)", check=at_least(1))
    timeout: float = opt(300.0, "seconds a request may wait for its answer (HTTP 503 after)", check=POSITIVE)

    def validate(self) -> list[str]:
        return check_fields(self)


@dataclass
class ModelConfig:
    """``heed generate``, ``chat`` and ``serve``: the model that answers, its template and its device."""

    model: str | None = opt(None, "a model directory (heed-trained: its template is used)")
    template: str | None = opt(None, "override the template (default: the model's heed.json, else alpaca)",
                               choices=template_names)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")

    def validate(self) -> list[str]:
        return check_fields(self)


@dataclass
class JudgeConfig:
    """``heed judge`` and ``heed compare``: which judge, where it runs, and how patiently it is asked.
    The --judge and --url texts are parsed by ``heed.evaluate.judge.JudgeSpec``."""

    judge: str = opt("ollama:llama3", "the judge: ollama:MODEL or openai:MODEL")
    url: str | None = opt(None, "server URL (Ollama default http://localhost:11434; for openai: the /v1 base URL; "
                          "http://USER:PASSWORD@HOST sends basic auth); the API key comes from "
                          "$HEED_JUDGE_API_KEY or $OPENAI_API_KEY")
    template: str = opt("alpaca", "template used to show the task to the judge", choices=template_names)
    concurrency: int = opt(1, "requests in flight (servers that batch: 4-8)", check=at_least(1))
    timeout: float = opt(120.0, "seconds for a whole request: connect, send and the full reply, streamed or not",
                         check=SECONDS)
    retries: int = opt(3, "retries after a timeout, 5xx or malformed reply, with backoff",
                       check=(lambda v: v >= 0, "0 or more"))
    deadline: float | None = opt(None, "stop the whole run after this long, saving what was judged (default: no "
                                 "limit)", check=SECONDS, metavar="SECONDS")
    fresh: bool = opt(False, "judge every record again, even where the output file holds an unfinished run to "
                      "resume")

    def validate(self) -> list[str]:
        return check_fields(self)


@dataclass
class TasksConfig:
    """``heed tasks make``: how many verifiable task records, and from which families."""

    n: int = opt(1000, "number of records", check=at_least(1))
    seed: int = opt(123, "seed")
    families: list[str] | None = opt(None, "comma-separated subset of families (default: all)")

    def validate(self) -> list[str]:
        problems = check_fields(self)
        if isinstance(self.families, list):
            known = task_families()
            unknown = [f for f in self.families if f not in known] or ([""] if not self.families else [])
            if unknown:
                problems.append(f"--families: unknown {', '.join(unknown)}; choose from: {', '.join(known)}")
        return problems


@dataclass
class InspectConfig:
    """``heed inspect``: which record to show, and how."""

    index: int = opt(0, "record to show, counted from 0")
    color: str = opt("auto", "colour the tokens: auto (on a terminal, unless $NO_COLOR is set), always or never",
                     choices=("auto", "always", "never"))

    def validate(self) -> list[str]:
        return check_fields(self)


@dataclass
class FastPath:
    """heed's speed features, each switchable: ``heed train`` uses the defaults; ``heed bench`` turns
    them off one at a time (and all of them for the original design's reference loop)."""

    # supervised: logits only where a target is trained on, heed's fused head (heed.train.loss); torch:
    # the same positions through torch.nn.functional.linear_cross_entropy; full: every position's logits;
    # auto: supervised on a CPU, torch on CUDA (heed.train.loss.resolve_head says why)
    head: str = "auto"
    tied_lookup: bool = True  # the tied embedding's lookup gradient added into the head's
    fused_adamw: bool = True  # AdamW's fused kernel where torch has one
    fold_clip: bool = True  # gradient clipping folded into the fused AdamW kernel
    fused_act: bool = True  # GPT-2's GELU as PyTorch's fused kernel
    short_attn: bool = True  # short rows' attention written out on the CPU (heed.model.attention)
    # packed rows' attention: flex (FlexAttention with a per-example block mask, heed.model.attention),
    # mask (SDPA over the whole row with a dense block-diagonal mask), auto (flex on CUDA, mask on a CPU)
    packed_attn: str = "auto"

    @classmethod
    def none(cls) -> "FastPath":
        return cls("full", False, False, False, False, False, packed_attn="mask")


@dataclass
class RunConfig:
    """Everything ``heed train`` needs: the data and the training run."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> list[str]:
        return self.data.validate() + self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "RunConfig":
        return from_dict(cls, d, source)
