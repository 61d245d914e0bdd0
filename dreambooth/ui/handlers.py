"""What each button of the page does, as plain functions of the page's values: they find the run,
call runs/photos/jobs/gallery, and turn a DreamboothError into the message shown in the page. Form
values arrive as a dict (field name -> widget value), in form.form_fields() order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import load_yaml, save_yaml
from ..errors import DreamboothError
from . import form, progress, runs
from .gallery import render_gallery
from .jobs import JobQueue
from .photos import report_or_error

TRAINABLE = ("draft", "failed")   # states whose run folder a Train press reuses; others start a new run


def error(e: Exception) -> str:
    return f"**Error:** {e}"


class Handlers:
    def __init__(self, work_dir: Path, queue: JobQueue):
        self.work_dir, self.queue = Path(work_dir), queue

    # -- which run this browser tab shows ------------------------------------------------------
    def run(self, name: str) -> runs.RunFolder | None:
        try:
            return runs.open_run(self.work_dir, name) if name else None
        except DreamboothError:
            return None

    def initial_run(self) -> str:
        """What a (re)opened page shows: the training run, else the newest run, else none yet."""
        active = self.queue.active()
        if active:
            return active
        found = runs.list_runs(self.work_dir)
        return found[0].name if found else ""

    def form_values(self, name: str) -> dict[str, Any]:
        """A run's settings as it was trained (request.yaml), else the defaults."""
        run = self.run(name)
        if run and run.request.exists():
            return form.job_to_form(form.without_managed(load_yaml(run.request)))
        return form.job_to_form(form.default_job())

    def runs_table(self) -> list[list[str]]:
        rows = []
        for run in runs.list_runs(self.work_dir):
            p = progress.progress(run)
            rows.append([run.name, run.status().get("state", "draft"), f"{p.step}/{p.max_steps}" if p.max_steps else "",
                         p.identifier or ""])
        return rows

    def header(self, name: str) -> str:
        run = self.run(name)
        if run is None:
            return "No run yet: add photos to start one."
        return f"Run **{run.name}** ({run.status().get('state', 'draft')}) in `{run.root}`"

    # -- Photos ---------------------------------------------------------------------------------
    def photo_run(self, name: str) -> runs.RunFolder:
        """Photos go into the shown run while it has not trained; otherwise into a new run."""
        run = self.run(name)
        if run is None or run.status().get("state", "draft") != "draft":
            run = runs.new_run(self.work_dir)
        return run

    def upload(self, name: str, files: list[str] | None, values: dict) -> tuple[str, str]:
        """-> (run name, message). Files are gradio's temporary copies; their original names are kept
        only after safe_name."""
        if not files:
            return name, "Drop 3-20 photos here, or pick a micro-world subject."
        run = self.photo_run(name)
        try:
            runs.store_uploads(run, [(Path(f).name, Path(f)) for f in files], values.get("caption_extension") or None)
        except DreamboothError as e:
            return run.name, error(e)
        return run.name, ""

    def use_subject(self, name: str, subject: str) -> tuple[str, str]:
        run = self.photo_run(name)
        try:
            runs.store_subject(run, subject)
        except DreamboothError as e:
            return run.name, error(e)
        return run.name, ""

    def photo_view(self, name: str, values: dict) -> tuple[str, list[list[str]], list]:
        """-> (message, [file, used/skipped, why] rows, crops as (image, caption))."""
        run = self.run(name)
        if run is None:
            return "No photos yet: upload 3-20 photos or pick a micro-world subject.", [], []
        try:
            job = form.form_to_job(values)
        except DreamboothError:
            job = form.default_job()   # the crops still show; Train will name the bad setting
        report, message = report_or_error(run.photos, job)
        if report is None:
            return error(message), [], []
        notes = "".join(f"\n- {n}" for n in report.notes)
        return report.summary() + notes, report.rows, report.crops

    # -- Settings -------------------------------------------------------------------------------
    def load_config(self, path: str | None) -> tuple[dict | None, str]:
        if not path:
            return None, ""
        try:
            job = load_yaml(Path(path))
        except DreamboothError as e:
            return None, error(e)
        note = "Loaded. The photos folder and output folder of the file are not used: each run has its own."
        return form.job_to_form(form.without_managed(job)), note

    def save_config(self, name: str, values: dict) -> tuple[str | None, str]:
        try:
            job = form.form_to_job(values, self.managed(name))
        except DreamboothError as e:
            return None, error(e)
        folder = self.run(name).root if self.run(name) else self.work_dir
        path = folder / "dreambooth-config.yaml"
        save_yaml(job, path)
        return str(path), f"Saved to `{path}`."

    def managed(self, name: str) -> dict[str, Any]:
        run = self.run(name)
        return {"instance_data_dir": str(run.photos), "output_dir": str(run.model)} if run else {}

    # -- Train ----------------------------------------------------------------------------------
    def train(self, name: str, values: dict) -> tuple[str, str]:
        """Check the settings as the CLI does, write RUN/request.yaml and queue the run."""
        from ..core.preflight import preflight
        run = self.run(name)
        if run is None or not run.photos.is_dir():
            return name, error("Add photos first (Photos tab).")
        if run.status().get("state", "draft") not in TRAINABLE:
            run = self.copy_run(run)
        try:
            job = form.form_to_job(values, self.managed(run.name))
            preflight(job)
            report, message = report_or_error(run.photos, job)
            if report is None:
                raise DreamboothError(message)
            save_yaml(job, run.request)
            place = self.queue.submit(run)
        except DreamboothError as e:
            return run.name, error(e)
        return run.name, ("Training started." if place == 0 else
                          f"Queued: {place} job{'s' if place > 1 else ''} ahead of it. It starts by itself.")

    def copy_run(self, run: runs.RunFolder) -> runs.RunFolder:
        """A trained run keeps its model: training again starts a new run with the same photos."""
        import shutil
        new = runs.new_run(self.work_dir)
        shutil.copytree(run.photos, new.photos)
        return new

    def stop(self, name: str) -> str:
        return self.queue.stop(name) if self.run(name) else "No run is shown."

    def resume(self, name: str) -> str:
        run = self.run(name)
        if run is None or run.status().get("state") != "stopped":
            return error("Only a stopped run can be resumed.")
        try:
            place = self.queue.submit(run, resume=True)
        except DreamboothError as e:
            return error(e)
        return "Resuming from the latest checkpoint, with the settings it started with." if place == 0 else \
            f"Queued to resume: {place} job{'s' if place > 1 else ''} ahead of it."

    def train_view(self, name: str) -> dict[str, Any]:
        """Everything the Train tab shows for a run, re-read from its folder (so a reopened page sees it)."""
        run = self.run(name)
        if run is None:
            return {"status": "No run yet.", "bar": "", "curve": "", "plan": "", "previews": [], "log": "",
                    "identifier": "Identifier: chosen from the model's tokenizer when training starts."}
        status, p = run.status(), progress.progress(run)
        state = status.get("state", "draft")
        place = self.queue.position(run.name)
        message = status.get("message", "")
        if state == "queued" and place:
            message = f"Queued: {place} job{'s' if place > 1 else ''} ahead of it."
        return {"status": f"**{state}** {message}".strip(), "bar": progress.bar_html(p, state),
                "curve": progress.curve_svg(p.losses), "plan": "\n\n".join(p.plans),
                "previews": progress.previews(run), "log": progress.log_tail(run),
                "identifier": f"Identifier: `{p.identifier}`" if p.identifier else
                "Identifier: chosen from the model's tokenizer when training starts."}

    # -- Results --------------------------------------------------------------------------------
    def render(self, name: str, prompts: str, n: int, steps: int) -> tuple[list, str]:
        run = self.run(name)
        if run is None:
            return [], error("Open a finished run first.")
        try:
            return render_gallery(run, prompts, int(n), int(steps)), ""
        except DreamboothError as e:
            return [], error(e)

    def downloads(self, name: str) -> tuple[list[str], str]:
        run = self.run(name)
        if run is None:
            return [], error("Open a finished run first.")
        try:
            files = [runs.zip_model(run)] + runs.weight_downloads(run)
        except DreamboothError as e:
            return [], error(e)
        return [str(f) for f in files], "Ready: " + ", ".join(f.name for f in files)


def as_values(names: list[str], widgets: tuple) -> dict[str, Any]:
    return dict(zip(names, widgets))

