"""Training objectives on logits: causal-LM cross-entropy and knowledge distillation.

Pure functions of tensors (no model, no I/O), so a test checks them against a direct
computation on fixed logits. torch is imported inside each function, as everywhere in targets/.
"""

from __future__ import annotations


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


def distill_loss(student_logits, teacher_logits: list, weights: list[float], labels,
                 temperature: float, alpha: float):
    """(loss, ce, kd) with kd = Σ_i w_i · KL(softmax(t_i/T) ‖ softmax(s/T)) · T² (the KL summed
    over the vocabulary and averaged over tokens) and loss = alpha · kd + (1 - alpha) · ce.

    The T² keeps the gradient of the soft targets on the scale of the hard ones as T grows
    (Hinton et al., 2015), so alpha means the same thing at every temperature."""
    import torch.nn.functional as F

    vocab = student_logits.shape[-1]
    student = student_logits.float().reshape(-1, vocab)
    ce = F.cross_entropy(student, labels.reshape(-1))
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    kd = student.new_zeros(())
    for logits, weight in zip(teacher_logits, weights, strict=True):
        log_p_teacher = F.log_softmax(logits.float().reshape(-1, vocab) / temperature, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        kd = kd + weight * kl * temperature**2
    return alpha * kd + (1 - alpha) * ce, ce, kd
