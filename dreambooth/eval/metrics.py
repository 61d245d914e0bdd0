"""The paper's evaluation metrics (DreamBooth §4.1, Table 1) as pure functions on embeddings.

Every function takes embedding tensors (one row per image or prompt) and returns a float. Rows are
L2-normalised here, so callers may pass raw encoder outputs; a dot product is then a cosine.

- DINO / CLIP-I (subject fidelity): mean cosine over all (generated, real) pairs.
- CLIP-T (prompt fidelity): mean cosine between each prompt and each of its images.
- PRES (prior preservation): DINO similarity of the real subject images to the fine-tuned model's
  class-prompt samples ("a dog"); lower = the class drifted less towards the subject.
- DIV-DINO (class diversity): 1 - mean DINO cosine between distinct class-prompt samples. The paper
  uses LPIPS; no LPIPS weights are available here, so this is a DINO-based stand-in, named as such.
- Zero-shot accuracy: the share of images a CLIP reads as their prompt's label (the micro world reads
  the prompt's context this way: a prompt-fidelity figure that is near 1 on ideal renders).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _unit(x: Tensor) -> Tensor:
    """(N, D) -> (N, D) rows of unit length, float64 so that means of many cosines stay exact."""
    if x.ndim != 2:
        raise ValueError(f"expected embeddings (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("need at least one embedding")
    return F.normalize(x.detach().to(torch.float64), dim=-1)


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(N, D), (M, D) -> (N, M) cosine similarities."""
    return _unit(a) @ _unit(b).T


def mean_pairwise_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine over all N x M pairs of a (N, D) and b (M, D): DINO and CLIP-I when a holds the
    generated images' embeddings and b the real images'."""
    return float(cosine_matrix(a, b).mean())


def mean_distinct_pairs_cosine(x: Tensor) -> float:
    """Mean cosine between distinct rows of x (N, D), the diagonal (each image with itself, always 1)
    left out. The similarity of a set to itself, e.g. of the real images to one another."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least two embeddings to compare distinct pairs")
    sims = cosine_matrix(x, x)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def subject_fidelity(generated: Tensor, real: Tensor) -> float:
    """DINO (with DINO embeddings) or CLIP-I (with CLIP image embeddings)."""
    return mean_pairwise_cosine(generated, real)


def prompt_fidelity(text: Tensor, images: Tensor, prompt_index: Sequence[int] | Tensor) -> float:
    """CLIP-T: text (P, D) embeds P prompts, images (N, D) embeds N images, prompt_index (N,) says
    which prompt made each image. Mean over images of cos(image, its prompt)."""
    index = torch.as_tensor(prompt_index, dtype=torch.long)
    if index.shape != (images.shape[0],):
        raise ValueError(f"prompt_index must have one entry per image ({images.shape[0]}), got {tuple(index.shape)}")
    per_image = (_unit(images) * _unit(text)[index]).sum(-1)                    # (N,)
    return float(per_image.mean())


def preservation(real: Tensor, class_samples: Tensor) -> float:
    """PRES: DINO similarity between the real subject images (N, D) and the model's class-prompt
    samples (M, D). High means "a dog" now draws *this* dog: the class prior drifted."""
    return mean_pairwise_cosine(class_samples, real)


def diversity_dino(class_samples: Tensor) -> float:
    """DIV-DINO: 1 - mean DINO cosine between distinct class-prompt samples (M, D), M >= 2.
    0 when every sample is the same image; higher = more varied. Stand-in for the paper's LPIPS."""
    return 1.0 - mean_distinct_pairs_cosine(class_samples)


def per_group_fidelity(generated: Tensor, real: Tensor, group: Sequence[int] | Tensor, n_groups: int) -> list[float]:
    """Subject fidelity of each group of generated images (e.g. one group per prompt) against real:
    generated (N, D), real (M, D), group (N,) in [0, n_groups). Empty groups give nan."""
    index = torch.as_tensor(group, dtype=torch.long)
    per_image = cosine_matrix(generated, real).mean(1)                          # (N,)
    return [float(per_image[index == g].mean()) if (index == g).any() else float("nan") for g in range(n_groups)]


def per_group_prompt_fidelity(text: Tensor, images: Tensor, prompt_index: Sequence[int] | Tensor) -> list[float]:
    """CLIP-T of each prompt's own images: text (P, D), images (N, D), prompt_index (N,) -> P floats."""
    index = torch.as_tensor(prompt_index, dtype=torch.long)
    return [prompt_fidelity(text[p:p + 1], images[index == p], torch.zeros(int((index == p).sum()), dtype=torch.long))
            if (index == p).any() else float("nan") for p in range(text.shape[0])]


def paired_fidelity(generated: Tensor, reference: Tensor, gen_group: Sequence[int] | Tensor,
                    ref_group: Sequence[int] | Tensor, n_groups: int) -> list[float]:
    """For each group g, mean cosine between generated images of g and reference images of g (in
    the micro world: a prompt's samples vs that prompt's ideal renders)."""
    gi, ri = torch.as_tensor(gen_group, dtype=torch.long), torch.as_tensor(ref_group, dtype=torch.long)
    out = []
    for g in range(n_groups):
        if (gi == g).any() and (ri == g).any():
            out.append(mean_pairwise_cosine(generated[gi == g], reference[ri == g]))
        else:
            out.append(float("nan"))
    return out


def zero_shot_accuracy(images: Tensor, labels: Tensor, truth: Sequence[int] | Tensor) -> float | None:
    """Share of images (N, D) whose most similar label embedding (L, D) is truth (N,) (cosine, so raw
    embeddings do); images with truth -1 are not asked. None when no image is asked."""
    t = torch.as_tensor(truth, dtype=torch.long)
    asked = t >= 0
    if not asked.any():
        return None
    read = cosine_matrix(images[asked], labels).argmax(dim=1)
    return float((read == t[asked]).double().mean())
