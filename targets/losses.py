"""Training objectives on logits: causal-LM cross-entropy and knowledge distillation, from live
teachers' logits or from a stored teacher's top-k (`TopK`, `topk_kl`).

Pure functions of tensors (no model, no I/O), so a test checks them against a direct
computation on fixed logits. torch is imported inside each function, as everywhere in targets/.
"""

from __future__ import annotations

from typing import Any, NamedTuple


def lm_loss(logits, labels):
    """Mean next-token cross-entropy; `labels[b, t]` is the token that follows position t."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))


def lm_loss_sum(logits, labels):
    """(summed next-token cross-entropy, number of tokens counted): labels of -100 are skipped,
    so a caller divides by the count of a whole optimizer step, and a window without a
    counted token adds nothing instead of a NaN."""
    import torch.nn.functional as F

    flat = labels.reshape(-1)
    return (F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), flat, ignore_index=-100, reduction="sum"),
            int((flat != -100).sum()))


class TopK(NamedTuple):
    """A stored teacher's targets at a micro-batch's positions (targets/teacher.py): the
    log-probabilities of softmax(teacher logits / T) of k tokens per position [..., k], their ids
    [..., k] (None: the columns are the whole vocabulary in id order), and the log of the mass of
    the other tokens [...] (-inf, or unused, when none is left out)."""

    logprobs: Any
    ids: Any
    rest: Any


class Groups(NamedTuple):
    """A stored teacher's targets for groups of student tokens (`align: uld` or `map`,
    targets/align.py): the micro-batch's windows [batch, L + 1] (inputs and the last label),
    each window's groups (a, b) as int arrays [G_b, 2] (tokens a..b of the window, predicted from
    logit rows a-1..b-1), and for the G groups of all windows, in order: the teacher's merged
    log-probabilities [G, k], their student ids [G, k] (`map`; -1 for none) or None (`uld`), the
    log of the merged mass outside them [G], and `align.vocab_map`'s teacher-to-student ids (`map`)."""

    align: str
    windows: Any
    spans: list
    logprobs: Any
    ids: Any
    rest: Any
    mapping: Any


def distill_loss(student_logits, targets: list, weights: list[float], labels, temperature: float, alpha: float):
    """(loss, ce, kd, per_teacher) with kd = Σ_i w_i · KL(softmax(t_i/T) ‖ softmax(s/T)) · T² (the KL
    summed over the vocabulary and averaged over tokens), loss = alpha · kd + (1 - alpha) · ce, and
    per_teacher the terms w_i · KL_i · T² of kd, one per teacher. A target is a live teacher's
    logits, a `TopK` of stored ones (`topk_kl`), or `Groups` of a teacher of another tokenizer,
    whose term is w_i times `grouped_loss` (ULD's distance, or the map KL, which holds its T²).

    The T² keeps the gradient of the soft targets on the scale of the hard ones as T grows
    (Hinton et al., 2015), so alpha means the same thing at every temperature."""
    import torch
    import torch.nn.functional as F

    vocab = student_logits.shape[-1]
    student = student_logits.float().reshape(-1, vocab)
    ce = F.cross_entropy(student, labels.reshape(-1))
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    terms = []
    for target, weight in zip(targets, weights, strict=True):
        if isinstance(target, Groups):
            terms.append(weight * grouped_loss(student_logits, target, temperature))
            continue
        if isinstance(target, TopK):
            kl = topk_kl(log_p_student, target)
        else:
            log_p_teacher = F.log_softmax(target.float().reshape(-1, vocab) / temperature, dim=-1)
            kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        terms.append(weight * kl * temperature**2)
    per_teacher = torch.stack(terms) if terms else student.new_zeros(0)
    kd = per_teacher.sum()
    return alpha * kd + (1 - alpha) * ce, ce, kd, per_teacher


def topk_kl(log_q, target: TopK):
    """KL(teacher ‖ student) averaged over positions, from a teacher's stored top-k: over the k
    tokens, plus one bucket for the rest, whose student mass is 1 - its mass on the k (taken as
    the log-sum-exp of its other log-probabilities, exact however small). `log_q`: the student's
    log-softmax at the same temperature, [positions, vocab]. By the log-sum inequality the bucket
    can only lower the KL of the whole distribution; with every token kept (`ids` None) it is
    that KL."""
    k = target.logprobs.shape[-1]
    # a stored -inf (a probability float16 cannot hold) is a zero: 0 · log 0 counts nothing
    log_p = target.logprobs.float().reshape(-1, k).clamp(min=-1e4)
    if target.ids is None:
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    ids = target.ids.reshape(-1, k).long()
    kept = (log_p.exp() * (log_p - log_q.gather(-1, ids))).sum(-1)
    rest_p = target.rest.float().reshape(-1).clamp(min=-1e4)
    rest_q = log_q.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return (kept + rest_p.exp() * (rest_p - rest_q)).mean()


def grouped_loss(student_logits, target: Groups, temperature: float):
    """The distillation term of a teacher of another tokenizer, over every group of the
    micro-batch: each window's student logits [L, V] merged over its groups (`align.student_merged`,
    at temperature T), then `align.uld_loss_topk` (ULD: L1 between the sorted probabilities, the
    rest as one more coordinate; no T², it is no KL) or `align.map_loss_topk` (KL over the
    student's ids, times T²)."""
    import numpy as np
    import torch

    from targets import align

    merged = torch.cat([align.student_merged(student_logits[b], target.windows[b], np.concatenate([s, s], axis=1),
                                             temperature) for b, s in enumerate(target.spans)])
    rest = target.rest.float().exp()
    if target.align == "uld":
        return align.uld_loss_topk(merged, target.logprobs.float(), rest)
    return align.map_loss_topk(merged, target.ids, target.logprobs.float(), rest, target.mapping, temperature)
