from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ferlab.config import AugmentConfig, TrainConfig
from ferlab.data import decode_images, discover, stratified_split
from ferlab.models import build_model, get_architecture
from ferlab.resume import load_state, save_state
from ferlab.train import EpochRecord, fit, one_cycle


def test_one_cycle_warms_up_then_anneals() -> None:
    total = 100
    lrs = [one_cycle(step, total, 0.3)[0] for step in range(total)]
    peak = max(range(total), key=lambda s: lrs[s])
    assert 25 <= peak <= 35
    assert lrs[0] == pytest.approx(1 / 25)
    assert lrs[-1] < 0.01
    momenta = [one_cycle(step, total, 0.3)[1] for step in range(total)]
    assert momenta[0] == pytest.approx(0.95) and min(momenta) == pytest.approx(0.85, abs=1e-3)


def _data(faces: Path) -> tuple:
    images = decode_images(discover(faces), 32)
    train, valid = stratified_split(images.labels.tolist(), 0.25, seed=0)
    return images.subset(train), images.subset(valid)


def _fit(faces: Path, **kwargs: object):
    train, valid = _data(faces)
    torch.manual_seed(0)
    arch = get_architecture("mobilenet_v2")
    model = build_model(arch.name, 5)
    config = TrainConfig(freeze_epochs=1, epochs=2, lr=3e-3, seed=0)
    result = fit(
        model, train, valid, config, AugmentConfig(), mean=arch.mean, std=arch.std,
        batch_size=16, device=torch.device("cpu"), **kwargs,
    )
    return model, result


def test_fit_follows_the_study_schedule(faces: Path) -> None:
    improved: list[EpochRecord] = []
    model, result = _fit(faces, on_improve=lambda m, r: improved.append(r))
    assert [(r.phase, r.epoch) for r in result.history] == [("frozen", 0), ("unfrozen", 0), ("unfrozen", 1)]
    assert result.best_accuracy == max(r.accuracy for r in result.history)
    assert improved[-1] == result.history[result.best_index]
    assert len(result.step_losses) == 3 * 3  # 45 training images, batch 16 -> 3 steps per epoch
    assert not result.interrupted and result.images_per_second > 0
    assert all(p.requires_grad for p in model.parameters())


def test_same_seed_same_history(faces: Path) -> None:
    _, first = _fit(faces)
    _, second = _fit(faces)
    assert [r.valid_loss for r in first.history] == [r.valid_loss for r in second.history]
    assert first.step_losses == second.step_losses


def test_interrupt_then_resume_matches_an_uninterrupted_run(faces: Path, tmp_path: Path) -> None:
    _, uninterrupted = _fit(faces)

    def interrupt_after_two(record: EpochRecord) -> None:
        if record.phase == "unfrozen" and record.epoch == 0:
            raise KeyboardInterrupt

    saved: list[bool] = []

    def on_state(model, optimizer, state, generator) -> None:  # type: ignore[no-untyped-def]
        save_state(tmp_path, model, optimizer, state, generator)
        saved.append(True)

    # The epoch callback fires after the state is saved: Ctrl-C there keeps epoch 2.
    _, stopped = _fit(faces, on_epoch=interrupt_after_two, on_state=on_state)
    assert stopped.interrupted and len(stopped.history) == 2 and saved == [True, True]

    model = build_model("mobilenet_v2", 5)
    state, optimizer_state, generator_state = load_state(tmp_path, model)
    assert len(state.history) == 2 and (state.phase_index, state.epoch_in_phase) == (1, 1)
    assert optimizer_state is not None  # mid-phase: the AdamW moments carry over
    train, valid = _data(faces)
    arch = get_architecture("mobilenet_v2")
    resumed = fit(
        model, train, valid, TrainConfig(freeze_epochs=1, epochs=2, lr=3e-3, seed=0), AugmentConfig(),
        mean=arch.mean, std=arch.std, batch_size=16, device=torch.device("cpu"),
        state=state, optimizer_state=optimizer_state, generator_state=generator_state,
    )
    assert [(r.phase, r.epoch) for r in resumed.history] == [("frozen", 0), ("unfrozen", 0), ("unfrozen", 1)]
    for a, b in zip(resumed.history, uninterrupted.history, strict=True):
        assert a.valid_loss == pytest.approx(b.valid_loss, rel=1e-4)


def test_early_stopping_on_accuracy(faces: Path) -> None:
    train, valid = _data(faces)
    arch = get_architecture("mobilenet_v2")
    torch.manual_seed(0)
    model = build_model(arch.name, 5)
    # A learning rate of zero never improves after the first epoch.
    config = TrainConfig(freeze_epochs=1, epochs=10, lr=0.0, patience=2, seed=0)
    result = fit(model, train, valid, config, AugmentConfig(), mean=arch.mean, std=arch.std,
                 batch_size=16, device=torch.device("cpu"))
    assert result.stopped_early
    assert len(result.history) == 3 and result.best_index == 0


def _frozen_only(faces: Path, augment: AugmentConfig, **config: object) -> tuple[torch.nn.Module, object]:
    train, valid = _data(faces)
    torch.manual_seed(0)
    arch = get_architecture("resnet18")
    model = build_model(arch.name, 5)
    settings = TrainConfig(freeze_epochs=3, epochs=0, lr=3e-3, seed=0, **config)  # type: ignore[arg-type]
    result = fit(model, train, valid, settings, augment, mean=arch.mean, std=arch.std,
                 batch_size=16, device=torch.device("cpu"))
    return model, result


def test_cached_frozen_phase_matches_the_direct_one(faces: Path) -> None:
    """Same weights, same data: training the head on cached features changes nothing but speed."""
    plain = AugmentConfig(enabled=False)
    direct_model, direct = _frozen_only(faces, plain)
    cached_model, cached = _frozen_only(faces, plain, cache_features=True, channels_last=True)
    assert [(r.phase, r.epoch) for r in cached.history] == [("frozen", 0), ("frozen", 1), ("frozen", 2)]
    for a, b in zip(cached.history, direct.history, strict=True):
        assert a.valid_loss == pytest.approx(b.valid_loss, rel=1e-4)
        assert a.accuracy == b.accuracy
    images = torch.randn(4, 3, 32, 32)
    assert torch.allclose(cached_model.eval()(images), direct_model.eval()(images), atol=1e-4)


def test_cached_frozen_phase_still_augments(faces: Path) -> None:
    from ferlab.train import pooled_features

    train, _ = _data(faces)
    model = build_model("resnet18", 5)
    model.freeze_body(True)
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    args = (model, train.images, mean, std, torch.device("cpu"), 32, False)
    assert torch.equal(pooled_features(*args), pooled_features(*args))  # a frozen body is a fixed function
    generator = torch.Generator().manual_seed(0)
    first = pooled_features(*args, AugmentConfig(), generator)
    second = pooled_features(*args, AugmentConfig(), generator)
    assert not torch.allclose(first, second)  # each view is a fresh augmentation
    _, plain = _frozen_only(faces, AugmentConfig(enabled=False), cache_features=True)
    _, augmented = _frozen_only(faces, AugmentConfig(), cache_features=True, feature_views=2)
    assert [r.train_loss for r in augmented.history] != [r.train_loss for r in plain.history]
