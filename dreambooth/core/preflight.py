"""The checks that need no model and no torch: every setting's range, the paths, the model folder.

The CLI runs them before its heavy imports, so a wrong flag or path is refused in about a second,
and `setup_run` runs them again for callers of the library. Nothing here writes anything.
"""

from __future__ import annotations

from pathlib import Path

from ..config import TrainJob, validate
from ..data.intake import check_image_folder, check_output_dir
from ..errors import DreamboothError
from .model_folder import check_resolution, folder_resolution_multiple, locate, require_safetensors

NO_MODEL = ("", "auto", "none")


def preflight(job: TrainJob) -> None:
    validate(job)
    d, p, o, t = job.data, job.prior, job.optim, job.train
    if p.with_prior_preservation and p.num_class_images < 1:
        raise DreamboothError("--with_prior_preservation needs class images: set --num_class_images to 1 or more "
                              "(the paper uses 200; 50-100 is usual), or drop --with_prior_preservation.")
    if t.train_text_encoder and t.pre_compute_text_embeddings:
        raise DreamboothError("--pre_compute_text_embeddings freezes the text encoder's output, so it cannot be "
                              "combined with --train_text_encoder. Drop one of the two.")
    if not d.instance_data_dir:
        raise DreamboothError("No photos given: pass --instance_data_dir FOLDER with 3-5 photos of the subject.")
    check_image_folder(Path(d.instance_data_dir), "instance")
    if p.class_data_dir and Path(p.class_data_dir).exists():   # a class folder may be made by this run
        check_image_folder(Path(p.class_data_dir), "class")
    check_output_dir(Path(job.output.output_dir),
                     [Path(d.instance_data_dir)] + ([Path(p.class_data_dir)] if p.class_data_dir else []))
    spec = job.checkpoint.resume_from_checkpoint
    if spec and spec != "latest":
        from .checkpoint import find_checkpoint
        find_checkpoint(Path(job.output.output_dir), spec)
    for flag, source in (("--model", job.model.pretrained_model_name_or_path), ("--sr-model", job.model.sr_model)):
        if source not in NO_MODEL:
            folder = locate(source, flag, job.model.revision if flag == "--model" else None)
            if folder.is_file():   # a single-file .safetensors checkpoint: its configs come with --original_config
                continue
            require_safetensors(folder, flag)
            if flag == "--model":
                check_resolution(d.resolution, folder_resolution_multiple(folder), source)
