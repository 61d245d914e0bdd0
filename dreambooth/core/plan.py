"""The training plan: what will happen, printed before the class images are drawn and step 1, and saved
beside the outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import write_json


@dataclass
class Plan:
    model: str
    model_kind: str
    resolution: int
    device: str
    precision: str
    identifier: str
    instance_prompt: str
    class_prompt: str | None
    instance_photos: int
    instance_views: int
    skipped: list[str]
    prior_preservation: str
    class_views: int
    steps: int
    effective_batch: int
    views_seen_per_photo: float
    trainable: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)   # odd photos, repaired class images: one line each
    adapter: dict | None = None      # LoRA runs: rank, alpha, DoRA, dropout, adapter file size

    @classmethod
    def build(cls, job, *, model, device, n_photos, n_views, skipped, class_job, n_class_views, params, lrs, max_steps,
              num_processes, identifier, instance_prompt, class_prompt, notes=(), adapter=None) -> "Plan":
        t = job.train
        eff = t.train_batch_size * t.gradient_accumulation_steps * num_processes
        prior = "OFF"
        if class_job is not None:
            # counted before any is drawn: the plan is printed before class images are generated
            prior = (f"ON: {class_job.wanted} class images in {class_job.folder} ({class_job.found} found, "
                     f"{class_job.missing} to generate), weight {job.prior.prior_loss_weight}")
        return cls(
            model=str(model.source), model_kind=("latent (VAE)" if model.latent else "pixel-space")
            + (f" super-resolution from {model.sr.lowres}px" if model.sr else ""),
            resolution=model.resolution, device=device, precision=t.mixed_precision, identifier=identifier,
            instance_prompt=instance_prompt, class_prompt=class_prompt, instance_photos=n_photos,
            instance_views=n_views, skipped=[f"{p.name} ({why})" for p, why in skipped], prior_preservation=prior,
            class_views=n_class_views, steps=max_steps, effective_batch=eff,
            views_seen_per_photo=round(max_steps * eff / max(n_photos, 1), 1),
            trainable={n: {"trainable_params": tr, "total_params": tot, "lr": lrs[n]} for n, (tr, tot) in params.items()},
            notes=list(notes), adapter=adapter)

    def render(self) -> str:
        lines = [
            f"model        {self.model} ({self.model_kind}, {self.resolution}px) on {self.device}, precision {self.precision}",
            f"identifier   {self.identifier!r}",
            f"instance     {self.instance_photos} photos x {self.instance_views // max(self.instance_photos, 1)} "
            f"cached views, prompt {self.instance_prompt!r}",
        ]
        if self.skipped:
            lines.append(f"skipped      {', '.join(self.skipped)}")
        lines += [f"note         {note}" for note in self.notes]
        lines += [
            f"prior        preservation {self.prior_preservation}"
            + (f", prompt {self.class_prompt!r}" if self.class_prompt else ""),
            f"schedule     {self.steps} steps x effective batch {self.effective_batch} "
            f"(+ as many class images); each photo seen ~{self.views_seen_per_photo} times",
        ]
        for name, p in self.trainable.items():
            lines.append(f"train        {name}: {p['trainable_params']:,} of {p['total_params']:,} parameters, "
                         f"lr {p['lr']:g}")
        if self.adapter:
            a = self.adapter
            lines.append(f"adapter      {'DoRA' if a['dora'] else 'LoRA'} rank {a['rank']}, alpha {a['alpha']}, "
                         f"dropout {a['dropout']:g}; adapter file ~{a['file_mib']:g} MiB (fp32 safetensors)")
        return "\n".join(lines)

    def save(self, folder: Path) -> None:
        write_json(folder / "plan.json", asdict(self))
