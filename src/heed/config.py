"""One dataclass per stage. The CLI builds these; a trained model saves them resolved in heed.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class DataConfig:
    data: str = ""  # instruction records: a JSON array or JSON Lines file
    fields: str | None = None  # field mapping, e.g. "instruction=prompt,output=completion"
    template: str = "alpaca"  # prompt template name (see heed.data.templates.TEMPLATES)
    max_length: int | None = None  # longest example in tokens; None = the model's context length
    overlong: str = "drop"  # what to do with longer examples: drop | truncate | error
    train_on_prompt: bool = False  # also train on prompt tokens (the original design's behaviour)
    train_frac: float = 0.85  # first share of the records used for training
    test_frac: float = 0.10  # next share used for the test set; the rest is validation
    shuffle: bool = False  # shuffle records before splitting
    split_seed: int = 123  # seed of that shuffle
    val_file: str | None = None  # validation records from their own file instead of the split
    test_file: str | None = None  # test records from their own file instead of the split
    skip_invalid: bool = False  # drop invalid records (counted in one line) instead of refusing the file


@dataclass
class LoraConfig:
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the adapter input
    target_modules: list[str] | str | None = None  # module names, "all-linear", or None (peft's default)


@dataclass
class TrainConfig:
    model: str = "random:gpt2-tiny"  # model spec (see heed.model)
    out: str = "runs/heed"  # output directory
    lr: float = 5e-5  # AdamW learning rate
    weight_decay: float = 0.1  # AdamW weight decay
    batch_size: int = 8  # examples per optimizer step (split into micro-batches by grad_accum)
    grad_accum: int = 1  # micro-batches per optimizer step
    pack: bool = False  # pack each micro-batch into padding-free rows (see pack_length)
    pack_length: int = 256  # longest packed row in tokens (capped at max_length); longer examples get a row each
    epochs: int = 2  # passes over the training split
    max_steps: int | None = None  # stop after this many optimizer steps
    eval_every: int = 5  # evaluate every N optimizer steps
    eval_batches: int = 5  # batches of train and validation data per evaluation
    patience: int | None = None  # early stopping after N evaluations without improvement; None = off
    min_delta: float = 0.0  # an improvement must lower validation loss by more than this
    clip: float | None = 1.0  # gradient-norm clipping; None = off
    compile: bool = False  # torch.compile the model's body; batch shapes bucketed (data.batch.make_batch)
    warmup_steps: int = 0  # linear warmup steps
    schedule: str = "constant"  # learning-rate schedule after warmup: constant | cosine
    precision: str = "auto"  # auto (bf16 autocast where supported) | bf16 | fp32
    seed: int = 123  # seed for initialisation, shuffling and dropout
    shuffle: bool = True  # reshuffle training examples every epoch
    checkpoint_every: int | None = None  # save a resumable checkpoint every N steps (and at the end)
    sample_every_epoch: bool = True  # print a greedy sample for the first validation prompt per epoch
    generate_test: bool = True  # write responses for the test split after training
    audit: bool = True  # write audit.json (the `heed data check` audit) before training
    max_new_tokens: int = 256  # for those responses
    lora: LoraConfig | None = None  # LoRA adapters instead of full finetuning
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class GenerateConfig:
    max_new_tokens: int = 256  # new tokens per response at most
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None  # sample from the k most likely tokens
    top_p: float | None = None  # nucleus sampling threshold
    batch_size: int = 8  # prompts per generation batch
    seed: int = 123  # seed for sampling
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 where the hardware has it)
    cache: str = "dynamic"  # KV cache: dynamic | static | compiled (static + torch.compile; CUDA graphs on CUDA)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        train = dict(d.get("train", {}))
        if train.get("lora") is not None:
            train["lora"] = LoraConfig(**train["lora"])
        return cls(DataConfig(**_known(DataConfig, d.get("data", {}))), TrainConfig(**_known(TrainConfig, train)))


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}
