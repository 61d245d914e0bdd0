"""The evaluation metrics' arithmetic on hand-made embeddings (no model involved)."""

from __future__ import annotations

import math

import pytest
import torch

from dreambooth.eval import metrics as m

E1, E2, E3 = torch.eye(3)                      # orthonormal directions


def rows(*vectors) -> torch.Tensor:
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in vectors])


def test_identical_images_score_one_and_orthogonal_zero():
    real = rows(E1, E1)
    assert m.subject_fidelity(rows(E1, E1, E1), real) == pytest.approx(1.0)
    assert m.subject_fidelity(rows(E2, E3), real) == pytest.approx(0.0)
    # raw (unnormalised) encoder outputs: only directions count
    assert m.subject_fidelity(rows(E1 * 7.0), rows(E1 * 0.01)) == pytest.approx(1.0)


def test_mean_over_all_pairs_known_value():
    # generated {e1, e2} x real {e1, (e1 + e2)/sqrt2}: cosines 1, 1/sqrt2, 0, 1/sqrt2
    expected = (1 + 2 / math.sqrt(2)) / 4
    assert m.mean_pairwise_cosine(rows(E1, E2), rows(E1, E1 + E2)) == pytest.approx(expected)
    assert m.cosine_matrix(rows(E1, E2), rows(E1, E1 + E2)).shape == (2, 2)
    assert m.mean_pairwise_cosine(rows(E1), rows(-E1)) == pytest.approx(-1.0)


def test_distinct_pairs_leave_out_the_diagonal():
    # e1, e1, e2: ordered distinct pairs (0,1) (1,0) are 1, the four with e2 are 0 -> 2/6
    assert m.mean_distinct_pairs_cosine(rows(E1, E1, E2)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        m.mean_distinct_pairs_cosine(rows(E1))


def test_diversity_is_one_minus_distinct_pair_similarity():
    assert m.diversity_dino(rows(E1, E1, E1, E1)) == pytest.approx(0.0)      # the same image 4 times
    assert m.diversity_dino(rows(E1, E2, E3)) == pytest.approx(1.0)          # mutually orthogonal
    assert m.diversity_dino(rows(E1, E1, E2)) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        m.diversity_dino(rows(E1))


def test_preservation_measures_drift_towards_the_subject():
    subject = rows(E1, E1)
    assert m.preservation(subject, rows(E1, E1, E1)) == pytest.approx(1.0)  # "a dog" draws this dog
    assert m.preservation(subject, rows(E2, E3)) == pytest.approx(0.0)      # the class kept its own meaning
    assert m.preservation(subject, rows(E1, E2)) == pytest.approx(0.5)


def test_clip_t_pairs_each_image_with_its_own_prompt():
    text = rows(E1, E2)
    images = rows(E1, E1, E2, E1 + E2)
    expected = (1 + 1 + 1 + 1 / math.sqrt(2)) / 4
    assert m.prompt_fidelity(text, images, [0, 0, 1, 1]) == pytest.approx(expected)
    assert m.prompt_fidelity(text, images, [1, 1, 0, 0]) == pytest.approx((0 + 0 + 0 + 1 / math.sqrt(2)) / 4)
    assert m.per_group_prompt_fidelity(text, images, [0, 0, 1, 1]) == pytest.approx([1.0, (1 + 1 / math.sqrt(2)) / 2])
    with pytest.raises(ValueError):
        m.prompt_fidelity(text, images, [0, 1])


def test_per_prompt_and_paired_figures():
    generated, real = rows(E1, E2, E1), rows(E1)
    per = m.per_group_fidelity(generated, real, [0, 1, 1], n_groups=3)
    assert per[:2] == pytest.approx([1.0, 0.5]) and math.isnan(per[2])
    ideal = rows(E2, E1)
    paired = m.paired_fidelity(generated, ideal, [0, 1, 1], [0, 1], n_groups=2)
    assert paired == pytest.approx([0.0, 0.5])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        m.subject_fidelity(E1, rows(E1))
    with pytest.raises(ValueError):
        m.subject_fidelity(torch.zeros(0, 3), rows(E1))


def test_zero_shot_accuracy_reads_the_nearest_label_and_skips_unasked_images():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])          # 3 labels in 2-D
    images = torch.tensor([[2.0, 0.1], [0.2, 3.0], [-1.0, 0.5], [0.0, 1.0]])   # read as 0, 1, 2, 1
    assert m.zero_shot_accuracy(images, labels, [0, 1, 2, 1]) == 1.0
    assert m.zero_shot_accuracy(images, labels, [0, 0, 2, 2]) == 0.5
    assert m.zero_shot_accuracy(images, labels, [-1, -1, 2, 0]) == 0.5    # -1: not asked
    assert m.zero_shot_accuracy(images, labels, [-1, -1, -1, -1]) is None
