"""`dreambooth eval --suite microworld`: the paper's findings in miniature, on every world subject.

For each subject: render its photos, train DreamBooth variants from the world's base model, sample
each under the protocol (the world's prompt list: DreamBench's prompts the world can draw) and
score them with the world's encoders against the photos AND against the ideal render of each
prompt, which only a procedural world can provide. The comparisons (issue 5):
  1. base model prompted with "[V] class" (no fine-tuning) vs DreamBooth vs ideal renders;
  2. with vs without prior preservation (PRES, DIV-DINO);
  3. with vs without step (b) SR fine-tuning: DreamBooth's step (a) model through the world's untouched
     SR model vs through an SR model fine-tuned on the same photos (detail fidelity at 64x64);
  4. identifier: rare token vs a common word vs no identifier.
When the world has an SR model (sr/), every row is rendered base -> SR at 64 px (the untouched SR
except in the step (b) row), so all rows, and the ideal renders, are compared at one size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .. import files
from ..config import TrainJob
from ..core.generate import read_identifier
from ..world.render import render
from ..world.defaults import PRESET, apply_preset
from ..world.subjects import SUBJECTS, Subject, get_subject, ideal_scene, write_photos
from .detail import detail_fidelity
from .encoders import WORLD_MODELS, resolve_encoders
from .protocol import Samples, Settings, fill, prompt_templates, sample_model
from .score import Figures, embed_reference, embed_samples, score
from .suite_report import row_labels, subject_grid, write_suite_report

BASE, IDEAL = "base", "ideal"


@dataclass(frozen=True)
class Variant:
    """One way of fine-tuning, as `dreambooth train` settings."""
    label: str
    prior: bool = True                        # prior preservation on
    identifier: str | None = None             # None: the tool's rare token; "": no identifier
    sr: bool = False                          # also fine-tune the SR model (step b) on top of 'dreambooth'
    lora: bool = False                        # a LoRA adapter (rank 4) instead of the full weights
    captions: bool = False                    # each photo trained on its caption ([V] + its context), not one prompt


def variants(common_word: str) -> dict[str, Variant]:
    return {"dreambooth": Variant("DreamBooth (rare token, prior preservation)"),
            "no_prior": Variant("DreamBooth without prior preservation", prior=False),
            "common_word": Variant(f"identifier: the common word '{common_word}'", identifier=common_word),
            "no_identifier": Variant("no identifier ('a photo of CLASS')", identifier=""),
            "sr_finetuned": Variant("DreamBooth + SR fine-tuning (step b)", sr=True),
            "lora": Variant("LoRA DreamBooth (rank 4, rare token, prior preservation)", lora=True),
            "captions": Variant("DreamBooth, each photo trained on its caption ('a photo of [V] star on the beach')",
                                captions=True)}


@dataclass
class SuiteConfig:
    out: Path
    world_dir: Path = WORLD_MODELS            # holds base/, clip/, instance/ (and sr/, tokenizer/)
    subjects: tuple[str, ...] = tuple(SUBJECTS)
    variants: tuple[str, ...] = ("dreambooth", "no_prior", "common_word", "no_identifier", "sr_finetuned")
    common_word: str = "picture"              # a world word with a meaning of its own, not a class or colour
    photos: int = 5
    # Each photo trained on its caption ('a photo of [V] can in the snow'), as the README's main command
    # trains: with one prompt the photos' two contexts are learned as part of [V] (context read 0.58 on
    # four subjects, 0.88 with captions). False: the paper's one prompt. no_identifier keeps one prompt
    # ('a photo of CLASS'): its captions would have no identifier to name the subject.
    captions: bool = True
    settings: Settings = field(default_factory=lambda: Settings(prompt_list="world", class_images=16))
    # Training: the micro-world preset's values (world/defaults.py), what `dreambooth train` uses there.
    train_steps: int = PRESET["max_train_steps"]
    learning_rate: float = PRESET["learning_rate"]
    lora_learning_rate: float | None = None   # the lora variant's rate (None: learning_rate)
    num_class_images: int = PRESET["num_class_images"]
    train_text_encoder: bool = PRESET.get("train_text_encoder", False)
    # pivotal tuning where the identifier is a rare token (not in the no_identifier and common_word variants)
    train_text_encoder_ti: bool = PRESET.get("train_text_encoder_ti", False)
    text_encoder_lr: float | None = PRESET.get("text_encoder_lr")   # the identifier's embedding (or the encoder's)
    sr_train_steps: int = PRESET["sr_max_train_steps"]      # step (b), at the preset's sr_learning_rate
    use_sr: bool = True                       # render through the world's SR model when it has one
    jobs: int = 2                             # subjects run side by side, in one-thread processes

    def sr_folder(self) -> Path | None:
        sr = self.world_dir / "sr"
        return sr if self.use_sr and (sr / "model_index.json").is_file() else None

    def check(self) -> None:
        self.settings.check()
        for s in self.subjects:
            get_subject(s)
        if not (self.world_dir / "base" / "model_index.json").is_file():
            from ..errors import DreamboothError
            raise DreamboothError(f"The micro world's models are not in {self.world_dir} (no base/model_index.json). "
                                  "Build them with `dreambooth world pretrain --out DIR` (the diffusion stages need "
                                  "a GPU; `--scale toy` for a smoke test) and pass --world-dir DIR.")
        if "sr_finetuned" in self.variants and "dreambooth" not in self.variants:
            from ..errors import DreamboothError
            raise DreamboothError("The suite variant sr_finetuned fine-tunes the SR model on top of the "
                                  "'dreambooth' variant; add dreambooth to --variants.")
        if self.captions and "captions" in self.variants:
            from ..errors import DreamboothError
            raise DreamboothError("The suite variant 'captions' is 'dreambooth' itself when every variant trains on "
                                  "the photos' captions (the default); add --no-captions to compare the two.")
        unknown = set(self.variants) - set(variants(self.common_word))
        if unknown:
            from ..errors import DreamboothError
            raise DreamboothError(f"Unknown suite variant(s) {sorted(unknown)}; choose from "
                                  f"{', '.join(variants(self.common_word))}.")


def train_job(cfg: SuiteConfig, subject: Subject, photos: Path, variant: Variant, out: Path) -> TrainJob:
    job = TrainJob()
    apply_preset(job)                                       # as `dreambooth train` in the world, then ours
    job.model.pretrained_model_name_or_path = str(cfg.world_dir / "base")
    job.model.sr_model = str(cfg.sr_folder() or "none")     # recorded for step (b); train() runs step (a) only
    job.superres.sr_max_train_steps = cfg.sr_train_steps
    job.data.instance_data_dir = str(photos)
    job.data.class_name = subject.cls
    if variant.identifier == "":
        job.data.instance_prompt = f"a photo of {subject.cls}"
    elif variant.identifier is not None:
        job.data.identifier = variant.identifier
    job.prior.with_prior_preservation = variant.prior
    job.adapter.lora = variant.lora
    captioned = variant.captions or (cfg.captions and variant.identifier != "")
    job.data.caption_extension = ".txt" if captioned else None    # world photos carry .txt captions
    job.prior.num_class_images = cfg.num_class_images
    job.prior.class_inference_steps = cfg.settings.steps          # the protocol's sampler for class images too
    job.optim.learning_rate = cfg.lora_learning_rate if variant.lora and cfg.lora_learning_rate else cfg.learning_rate
    job.train.max_train_steps = cfg.train_steps
    job.train.seed = cfg.settings.seed
    job.train.train_text_encoder = cfg.train_text_encoder
    # a rare identifier of the tool's choice (None); no_identifier has none, common_word's would change every prompt
    job.train.train_text_encoder_ti = cfg.train_text_encoder_ti and variant.identifier is None
    job.optim.text_encoder_lr = cfg.text_encoder_lr
    job.checkpoint.checkpointing_steps = max(cfg.train_steps, cfg.sr_train_steps)   # only the final one
    job.checkpoint.checkpoints_total_limit = 1
    job.output.output_dir = str(out)
    job.output.report_to = "none"
    return job


def ideal_samples(subject: Subject, templates: tuple[str, ...], settings: Settings, size: int) -> Samples:
    """The ideal render of every prompt (what a perfect model draws), at the model's output size."""
    prompts = [fill(t, "[V]", subject.cls) for t in templates]
    k = settings.images_per_prompt
    images = [Image.fromarray(render(ideal_scene(subject, p, seed=settings.seed + i))).resize((size, size), Image.BOX)
              for p in prompts for i in range(k)]
    return Samples(IDEAL, "world renderer (ideal_scene)", prompts, [fill(t, "", subject.cls) for t in templates],
                   images, [p for p in range(len(prompts)) for _ in range(k)],
                   [settings.seed + i for _ in prompts for i in range(k)])


def run_subject(cfg: SuiteConfig, subject: Subject, encoders, log) -> dict:
    """Train, sample and score every variant of one subject; -> {figures, samples, seconds}."""
    from ..core.cascade import sr_step
    from ..core.train import train

    folder = cfg.out / subject.name
    photos = folder / "photos"
    write_photos(subject, cfg.photos, photos, seed=cfg.settings.seed)
    real = embed_reference([Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))], encoders)
    templates = prompt_templates(subject.cls, "world", cfg.settings.prompts)
    class_prompt = f"a photo of {subject.cls}"
    table = variants(cfg.common_word)
    samples: dict[str, Samples] = {}
    seconds: dict[str, float] = {}
    sizes: dict[str, float] = {}
    untouched_sr = str(cfg.sr_folder() or "none")
    models: dict[str, Path] = {}
    sr_models: dict[str, str] = {}
    ids: dict[str, str] = {}
    for name in [n for n in table if n in cfg.variants]:      # canonical order: step (b) after 'dreambooth'
        v = table[name]
        if v.sr and cfg.sr_folder() is None:
            log(f"{subject.name}/{name}: skipped, the world in {cfg.world_dir} has no SR model (sr/)")
            continue
        start = time.time()
        if v.sr:    # step (b) from the 'dreambooth' variant's step (a): same identifier, prompts, seed
            step_a = train_job(cfg, subject, photos, table["dreambooth"], models["dreambooth"])
            job = sr_step(step_a, models["dreambooth"])
            job.output.output_dir = str(folder / "models" / name)
            sr_model, models[name], ids[name] = str(train(job)), models["dreambooth"], ids["dreambooth"]
        else:
            models[name] = train(train_job(cfg, subject, photos, v, folder / "models" / name))
            sr_model, ids[name] = untouched_sr, "" if v.identifier == "" else read_identifier(models[name]) or ""
        seconds[f"train/{name}"] = round(time.time() - start, 1)
        sr_models[name] = sr_model
        sizes[name] = weights_mib(Path(job.output.output_dir) if v.sr else models[name])
        # step (b)'s row shares step (a)'s model, prompts and seeds: only its SR stage is drawn again
        samples[name] = sample_model(models[name], templates, identifier=ids[name], class_name=subject.cls,
                                     class_prompt=class_prompt, settings=cfg.settings, label=v.label,
                                     sr_model=sr_model, low_res=samples["dreambooth"].low_res if v.sr else None)
    # the untouched base model, prompted with the same "[V] class" prompts (paper: no fine-tuning)
    rare = next((ids[n] for n in ("dreambooth", "no_prior") if n in ids), "")
    samples[BASE] = base_row(cfg, subject.cls, templates, rare, class_prompt)
    size = samples[BASE].images[0].size[0]
    samples[IDEAL] = ideal_samples(subject, templates, cfg.settings, size)
    figures = {name: score(s, real, encoders, ideal=samples[IDEAL], embedded=embed_samples(s, encoders))
               for name, s in samples.items()}
    seconds.update({f"sample/{n}": s.seconds for n, s in samples.items()})
    detail = {}
    if "sr_finetuned" in samples:       # step (b) on known low-res inputs, where the base's noise cannot hide it
        start = time.time()
        finetuned = samples["sr_finetuned"]
        base_size = json.loads((cfg.world_dir / "base" / "unet" / "config.json").read_text())["sample_size"]
        detail = detail_fidelity(samples[IDEAL], [finetuned.prompts[p] for p in samples[IDEAL].prompt_index],
                                 base_size, {"untouched": untouched_sr, "finetuned": sr_models["sr_finetuned"]},
                                 encoders.dino, cfg.settings)
        seconds["detail"] = round(time.time() - start, 1)
    return {"figures": figures, "samples": samples, "seconds": seconds, "real_self": real.self_similarity(),
            "output_mib": sizes, "detail": detail}


def base_row(cfg: SuiteConfig, cls: str, templates: tuple[str, ...], rare: str, class_prompt: str) -> Samples:
    """The untouched base model prompted with '[V] class'. It is the same for every subject of a class,
    so it is drawn once per class and kept in OUT/.base/ (samples.json, written last, marks it whole)."""
    key = hashlib.sha256(json.dumps([result_key(cfg), cls, rare, templates]).encode()).hexdigest()[:16]
    folder = cfg.out / ".base" / f"{cls}-{key}"
    try:
        record = json.loads((folder / "samples.json").read_text())
        load = lambda name: Image.open(folder / name).convert("RGB")            # noqa: E731
        return Samples(**{**record, "seconds": 0.0, "images": [load(f"p{i}.png") for i in range(len(record["seeds"]))],
                          "class_images": [load(f"c{i}.png") for i in range(len(record["class_seeds"]))]})
    except (OSError, ValueError):
        pass
    samples = sample_model(cfg.world_dir / "base", templates, identifier=rare, class_name=cls,
                           class_prompt=class_prompt, settings=cfg.settings, label="base model, '[V] class'",
                           sr_model=str(cfg.sr_folder() or "none"))
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, images in (("p", samples.images), ("c", samples.class_images)):
        for i, image in enumerate(images):
            with files.atomic_path(folder / f"{prefix}{i}.png") as tmp:
                image.save(tmp, format="PNG")
    kept = {f.name: getattr(samples, f.name) for f in dataclasses.fields(samples)
            if f.name not in ("images", "class_images", "low_res")}
    files.write_json(folder / "samples.json", kept)
    return samples


def weights_mib(folder: Path) -> float:
    """What a variant's training wrote to keep: its safetensors outside checkpoints (a pipeline or a LoRA file)."""
    files = [f for f in Path(folder).rglob("*.safetensors") if not any(p.startswith("checkpoint-")
                                                                      for p in f.relative_to(folder).parts)]
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def result_key(cfg: SuiteConfig) -> dict:
    """Everything a subject's result depends on: the settings (not where it is written or how many
    subjects run beside it), the world's training preset, and the world's weights by file size and
    time, so a rebuilt world is rerun."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
                if k not in ("out", "subjects", "jobs")}
    weights = sorted((str(f.relative_to(cfg.world_dir)), f.stat().st_size, f.stat().st_mtime_ns)
                     for part in ("base", "clip", "instance", "sr", "tokenizer") if (cfg.world_dir / part).is_dir()
                     for f in (cfg.world_dir / part).rglob("*") if f.is_file())
    return {"settings": settings, "preset": dict(PRESET),
            "world": hashlib.sha256(json.dumps(weights).encode()).hexdigest()[:16]}


KEPT = ("seconds", "real_self", "output_mib", "detail")  # beside the figures and the grid


def finish_subject(cfg: SuiteConfig, name: str, result: dict) -> dict:
    """Keep what the report needs (figures, the grid) in OUT/<subject>/, so a rerun of the suite with the
    same settings reuses it: a 12-subject suite that is stopped resumes at the subjects not yet done."""
    folder = cfg.out / name
    labels = row_labels({n: v.label for n, v in variants(cfg.common_word).items()})
    kept = {"figures": result["figures"], "grid": subject_grid(result["samples"], labels),
            **{k: result[k] for k in KEPT}}
    with files.atomic_path(folder / "grid.png") as tmp:
        kept["grid"].save(tmp, format="PNG")
    figures = {n: dataclasses.asdict(f) for n, f in kept["figures"].items()}
    files.write_json(folder / "result.json", {"key": result_key(cfg), "figures": figures,
                                              **{k: kept[k] for k in KEPT}})
    return kept


def saved_result(cfg: SuiteConfig, name: str) -> dict | None:
    """The subject's kept result when it was made with the same settings and world, else None."""
    folder = cfg.out / name
    try:
        record = json.loads((folder / "result.json").read_text())
        if record.get("key") != json.loads(json.dumps(result_key(cfg))):     # tuples read back as lists
            return None
        grid = Image.open(folder / "grid.png")
        grid.load()
    except (OSError, ValueError):
        return None
    return {"figures": {n: Figures(**f) for n, f in record["figures"].items()}, "grid": grid,
            **{k: record.get(k, {}) for k in KEPT}}            # results kept before 'detail' existed


def _subject_worker(cfg: SuiteConfig, name: str) -> dict:
    """One subject in a process of its own: one thread (two one-thread processes beat one two-thread
    process on a 2-core CPU, as in world pretraining), messages prefixed with the subject."""
    import torch

    from ..quiet import quiet_libraries
    torch.set_num_threads(1)
    quiet_libraries()                     # a spawned process starts with the libraries' defaults
    encoders = resolve_encoders(str(cfg.world_dir / "clip"), str(cfg.world_dir / "instance"))
    result = run_subject(cfg, get_subject(name), encoders, lambda msg: print(f"[{name}] {msg}", flush=True))
    return finish_subject(cfg, name, result)


def classes_apart(names: list[str]) -> list[str]:
    """Subjects reordered so that those of one class come as far apart as possible (the first of every
    class, then the second...). Subjects of a class share their class images: side by side, two workers
    would both draw them; one after the other, the second finds them cached."""
    by_class: dict[str, list[str]] = {}
    for name in names:
        by_class.setdefault(get_subject(name).cls, []).append(name)
    rounds = max(len(group) for group in by_class.values())
    return [group[i] for i in range(rounds) for group in by_class.values() if i < len(group)]


def run_suite(cfg: SuiteConfig, command: str = "", log=print) -> Path:
    """Every subject through every variant; writes OUT/metrics.json, OUT/report.md and pictures.
    Subjects already done with the same settings (OUT/<subject>/result.json) are reused, not rerun."""
    cfg.check()
    start = time.time()
    results = {name: r for name in cfg.subjects if (r := saved_result(cfg, name)) is not None}
    todo = [name for name in cfg.subjects if name not in results]
    if results:
        log(f"reusing {len(results)} subject(s) already done with these settings: {', '.join(results)} "
            f"(their OUT/<subject>/result.json; delete it to rerun one)")
    if cfg.jobs > 1 and len(todo) > 1:
        import multiprocessing
        log(f"{len(todo)} subjects, {cfg.jobs} at a time")
        with multiprocessing.get_context("spawn").Pool(cfg.jobs) as pool:
            jobs = {name: pool.apply_async(_subject_worker, (cfg, name)) for name in classes_apart(todo)}
            results.update({name: job.get() for name, job in jobs.items()})
    elif todo:
        encoders = resolve_encoders(str(cfg.world_dir / "clip"), str(cfg.world_dir / "instance"))
        for name in todo:
            log(f"== {name}")
            results[name] = finish_subject(cfg, name, run_subject(cfg, get_subject(name), encoders, log))
    results = {name: results[name] for name in cfg.subjects}          # the order asked for
    wall = round(time.time() - start, 1)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    config["sr_folder"] = str(cfg.sr_folder()) if cfg.sr_folder() else None
    config["reused"] = [name for name in cfg.subjects if name not in todo]
    config["preset"] = dict(PRESET)          # what every variant trained with, beneath the suite's own settings
    report = write_suite_report(cfg.out, results, config=config, command=command, wall_seconds=wall,
                                variant_labels={n: v.label for n, v in variants(cfg.common_word).items()})
    files.write_json(cfg.out / "suite_config.json", config)
    log(f"suite finished in {wall:.0f}s; report: {report}")
    return report
