"""Flow matching and task routing: the path, timestep samplers, and the paper's three losses."""

import hashlib
from collections import Counter

import pytest
import torch

from unityvideo.flow import (FlowPath, Route, RoutingConfig, TimestepSampler, draw_route, flow_loss, route_batch,
                             sample_generator, shift_timesteps)

C, F, H, W = 48, 2, 4, 4
TEXT = 384


def fake_text(texts):
    """Deterministic stand-in for a text encoder: features from a hash, length 3, all tokens real."""
    rows = []
    for text in texts:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        rows.append(torch.randn(3, TEXT, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows), torch.ones(len(texts), 3, dtype=torch.bool)


def batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(n, C, F, H, W, generator=g)
    mods = [torch.randn(C, F, H, W, generator=g) for _ in range(n)]
    noises = [(torch.randn(C, F, H, W, generator=g), torch.randn(C, F, H, W, generator=g)) for _ in range(n)]
    return rgb, mods, noises


def route(task, modality="depth", t_rgb=0.3, t_mod=0.7, drop_caption=False, drop_prompt=False):
    return Route(task, None if task == "t2v" else modality, t_rgb if task != "estimate" else 0.0,
                 t_mod if task in ("estimate", "joint") else 0.0, drop_caption, drop_prompt)


# ----- path and timesteps -------------------------------------------------------------------------


def test_path_interpolates_between_data_and_noise():
    x0, eps = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = FlowPath.interpolate(x0, eps, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2])
    assert torch.allclose(xt[1], 0.75 * x0[1] + 0.25 * eps[1])
    assert torch.equal(FlowPath.velocity(x0, eps), eps - x0)
    # the velocity is the time derivative of the path
    dt = 1e-3
    numeric = (FlowPath.interpolate(x0, eps, t[1:2].expand(3) + dt) - FlowPath.interpolate(x0, eps, t[1:2].expand(3))) / dt
    assert torch.allclose(numeric, eps - x0, atol=1e-3)


def test_shift_keeps_endpoints_and_moves_mass_to_noise():
    t = torch.linspace(0, 1, 11)
    shifted = shift_timesteps(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted[1:-1] > t[1:-1]) and torch.all(shifted.diff() > 0)
    assert shift_timesteps(torch.tensor(0.5), 3.0) == pytest.approx(0.75)
    assert torch.equal(shift_timesteps(t, 1.0), t)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_timestep_samplers(kind):
    t = TimestepSampler(kind=kind).sample(20000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 1
    assert t.mean() == pytest.approx(0.5, abs=0.01)
    if kind == "logit_normal":  # concentrated in the middle
        assert ((t > 0.25) & (t < 0.75)).float().mean() > 0.6
    shifted = TimestepSampler(kind=kind, shift=3.0).sample(20000, torch.Generator().manual_seed(0))
    assert shifted.mean() > 0.6


def test_bad_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="uniform"):
        TimestepSampler(kind="cosine")


# ----- routing draws ------------------------------------------------------------------------------


def test_tasks_and_modalities_follow_their_probabilities():
    config = RoutingConfig(tasks={"control": 0.2, "estimate": 0.3, "joint": 0.4, "t2v": 0.1},
                           modalities={"depth": 2.0, "flow": 1.0, "densepose": 1.0})
    routes = [draw_route(config, sample_generator(0, j)) for j in range(4000)]
    tasks = Counter(r.task for r in routes)
    for task, p in config.tasks.items():
        assert tasks[task] / 4000 == pytest.approx(p, abs=0.03)
    mods = Counter(r.modality for r in routes if r.task != "t2v")
    n = sum(mods.values())
    assert mods["depth"] / n == pytest.approx(0.5, abs=0.03)
    assert mods["flow"] / n == pytest.approx(0.25, abs=0.03)


def test_default_probabilities_follow_the_paper_order():
    p = RoutingConfig().tasks
    assert p["control"] < p["estimate"] < p["joint"]


def test_condition_streams_are_clean_and_targets_noisy():
    config = RoutingConfig(tasks={"control": 1, "estimate": 1, "joint": 1, "t2v": 1})
    for j in range(400):
        r = draw_route(config, sample_generator(3, j))
        if r.task == "control":
            assert r.t_modality == 0.0 and r.t_rgb > 0
        elif r.task == "estimate":
            assert r.t_rgb == 0.0 and r.t_modality > 0
        elif r.task == "joint":
            assert r.t_rgb > 0 and r.t_modality > 0 and r.t_rgb != r.t_modality  # independent t
        else:
            assert r.modality is None and r.t_modality == 0.0


def test_tied_joint_timesteps():
    config = RoutingConfig(tasks={"joint": 1}, tie_joint_timesteps=True)
    for j in range(50):
        r = draw_route(config, sample_generator(0, j))
        assert r.t_rgb == r.t_modality > 0


def test_draws_are_a_function_of_the_sample_number():
    config = RoutingConfig()
    a = [draw_route(config, sample_generator(5, j)) for j in range(20)]
    b = [draw_route(config, sample_generator(5, j)) for j in reversed(range(20))][::-1]
    assert a == b
    assert a != [draw_route(config, sample_generator(6, j)) for j in range(20)]


def test_dropout_rates():
    config = RoutingConfig(caption_dropout=0.25, prompt_dropout=0.5)
    routes = [draw_route(config, sample_generator(0, j)) for j in range(4000)]
    assert sum(r.drop_caption for r in routes) / 4000 == pytest.approx(0.25, abs=0.03)
    assert sum(r.drop_prompt for r in routes) / 4000 == pytest.approx(0.5, abs=0.03)


def test_bad_routing_config_names_the_field():
    with pytest.raises(ValueError, match="tasks: unknown"):
        RoutingConfig(tasks={"generate": 1.0})
    with pytest.raises(ValueError, match="modalities: unknown"):
        RoutingConfig(modalities={"normals": 1.0})
    with pytest.raises(ValueError, match="caption_dropout"):
        RoutingConfig(caption_dropout=1.5)


# ----- the paper's losses -------------------------------------------------------------------------


def one(task, **kw):
    """Route one sample through `task`; returns (group, clean rgb, clean modality, noises)."""
    rgb, mods, noises = batch(1)
    captions = ["a red ball rolls left"]
    config = RoutingConfig(**kw)
    (group,) = route_batch(config, [route(task)], rgb, mods, noises, captions, fake_text)
    return group, rgb[0], mods[0], noises[0]


def test_control_noises_rgb_and_keeps_the_modality_clean():
    """L_cond = || u(r_t, [m_0, c], t) - v_r ||^2."""
    group, r0, m0, (eps_r, eps_m) = one("control")
    rgb, mod = group.streams
    assert (rgb.modality, mod.modality) == ("rgb", "depth")
    assert torch.allclose(rgb.latent[0], 0.7 * r0 + 0.3 * eps_r) and float(rgb.timestep[0]) == pytest.approx(0.3)
    assert torch.equal(mod.latent[0], m0) and float(mod.timestep[0]) == 0.0
    assert torch.equal(group.targets[0][0], eps_r - r0)
    assert group.weights[0].tolist() == [1.0] and group.weights[1].tolist() == [0.0]
    assert torch.equal(rgb.context, fake_text(["a red ball rolls left"])[0])  # caption
    assert torch.equal(mod.context, fake_text(["depth map"])[0])  # in-context modality prompt


def test_estimate_noises_the_modality_and_conditions_on_clean_rgb_without_caption():
    """L_est = || u(m_t, r_0, t) - v_m ||^2."""
    group, r0, m0, (eps_r, eps_m) = one("estimate")
    rgb, mod = group.streams
    assert torch.equal(rgb.latent[0], r0) and float(rgb.timestep[0]) == 0.0
    assert torch.allclose(mod.latent[0], 0.3 * m0 + 0.7 * eps_m) and float(mod.timestep[0]) == pytest.approx(0.7)
    assert torch.equal(group.targets[1][0], eps_m - m0)
    assert group.weights[0].tolist() == [0.0] and group.weights[1].tolist() == [1.0]
    assert torch.equal(rgb.context, fake_text([""])[0])  # the paper's L_est has no caption
    group, *_ = one("estimate", estimate_caption=True)
    assert torch.equal(group.streams[0].context, fake_text(["a red ball rolls left"])[0])


def test_joint_noises_both_streams_with_their_own_timesteps():
    """L_joint = || u([r_t, m_t], c, t) - [v_r, v_m] ||^2."""
    group, r0, m0, (eps_r, eps_m) = one("joint")
    rgb, mod = group.streams
    assert torch.allclose(rgb.latent[0], 0.7 * r0 + 0.3 * eps_r)
    assert torch.allclose(mod.latent[0], 0.3 * m0 + 0.7 * eps_m)
    assert float(rgb.timestep[0]) == pytest.approx(0.3) and float(mod.timestep[0]) == pytest.approx(0.7)
    assert group.weights[0].tolist() == [1.0] and group.weights[1].tolist() == [1.0]


def test_t2v_has_only_the_rgb_stream():
    group, r0, _, (eps_r, _) = one("t2v")
    assert [s.modality for s in group.streams] == ["rgb"]
    assert torch.equal(group.targets[0][0], eps_r - r0)


@pytest.mark.parametrize("task", ["control", "estimate", "joint", "t2v"])
def test_loss_counts_the_noisy_streams_only(task):
    group, *_ = one(task)
    preds = [torch.randn_like(t) for t in group.targets]
    mse = [(p - t).pow(2).mean() for p, t in zip(preds, group.targets)]
    expected = {"control": mse[0], "estimate": mse[-1], "joint": (mse[0] + mse[-1]) / 2, "t2v": mse[0]}[task]
    assert flow_loss(preds, group)[0] == pytest.approx(float(expected), rel=1e-6)
    if task == "joint":  # the mean over both streams is the MSE of the concatenation [u_r, u_m] - [v_r, v_m]
        cat = (torch.cat(preds, 1) - torch.cat(group.targets, 1)).pow(2).mean()
        assert flow_loss(preds, group)[0] == pytest.approx(float(cat), rel=1e-6)
    # the output on a clean condition stream never enters the loss, not even as NaN * 0
    clean = [i for i, w in enumerate(group.weights) if w[0] == 0]
    for i in clean:
        preds[i] = torch.full_like(preds[i], float("nan"))
    assert torch.isfinite(flow_loss(preds, group)).all()


def test_dropout_empties_caption_and_prompt():
    rgb, mods, noises = batch(1)
    (group,) = route_batch(RoutingConfig(), [route("joint", drop_caption=True, drop_prompt=True)], rgb, mods,
                           noises, ["a caption"], fake_text)
    assert torch.equal(group.streams[0].context, fake_text([""])[0])
    assert torch.equal(group.streams[1].context, fake_text([""])[0])


def test_prompt_template():
    config = RoutingConfig(modality_prompt_template="a video of {prompt}")
    assert config.modality_prompt("depth") == "a video of depth map"


def test_mixed_batch_groups_by_modality_and_matches_single_samples():
    routes = [route("control", "depth"), route("t2v"), route("estimate", "flow"), route("joint", "depth"),
              route("joint", "flow", t_rgb=0.9, t_mod=0.1), route("t2v")]
    rgb, mods, noises = batch(len(routes))
    captions = [f"caption {i}" for i in range(len(routes))]
    groups = route_batch(RoutingConfig(), routes, rgb, mods, noises, captions, fake_text)
    assert [(g.modality, g.indices) for g in groups] == [("depth", [0, 3]), (None, [1, 5]), ("flow", [2, 4])]
    assert groups[0].tasks == ["control", "joint"]
    for group in groups:  # each sample is routed exactly as if it were alone
        for k, i in enumerate(group.indices):
            (alone,) = route_batch(RoutingConfig(), [routes[i]], rgb[i:i + 1], [mods[i]], [noises[i]],
                                   [captions[i]], fake_text)
            for s, a in zip(group.streams, alone.streams):
                assert torch.equal(s.latent[k], a.latent[0]) and torch.equal(s.context[k], a.context[0])
            for w, a in zip(group.weights, alone.weights):
                assert w[k] == a[0]


# ----- one-step deterministic estimation (beyond the paper) ---------------------------------------


def test_one_step_mode_overrides_only_the_estimate_timestep_and_keeps_every_draw():
    tasks = {"control": 1, "estimate": 1, "joint": 1, "t2v": 1}
    generative, one_step = RoutingConfig(tasks=tasks), RoutingConfig(tasks=tasks, estimate_mode="one_step")
    seen = Counter()
    for j in range(200):
        ga, gb = sample_generator(3, j), sample_generator(3, j)
        a, b = draw_route(generative, ga), draw_route(one_step, gb)
        assert torch.equal(torch.rand(4, generator=ga), torch.rand(4, generator=gb))  # same number of draws
        seen[a.task] += 1
        if a.task == "estimate":
            assert b.deterministic and b.t_modality == 1.0 and a.t_modality != 1.0 and not a.deterministic
            assert (b.task, b.modality, b.t_rgb, b.drop_caption, b.drop_prompt) == \
                (a.task, a.modality, a.t_rgb, a.drop_caption, a.drop_prompt)
        else:
            assert a == b
    assert min(seen.values()) > 20


def test_one_step_estimate_starts_from_zero_at_t1_and_regresses_x0():
    routes = [route("estimate", t_mod=1.0), route("joint"), route("control")]
    routes[0].deterministic = True
    rgb, mods, noises = batch(3)
    config = RoutingConfig(estimate_mode="one_step")
    (group,) = route_batch(config, routes, rgb, mods, noises, ["a", "b", "c"], fake_text)
    (plain,) = route_batch(RoutingConfig(), routes[1:], rgb[1:], mods[1:], noises[1:], ["b", "c"], fake_text)
    mod = group.streams[1]
    assert torch.count_nonzero(mod.latent[0]) == 0 and float(mod.timestep[0]) == 1.0
    assert torch.equal(group.targets[1][0], -mods[0])  # v = 0 - m0: x0_hat = -v_hat
    assert group.weights[1].tolist() == [1.0, 1.0, 0.0] and group.weights[0].tolist() == [0.0, 1.0, 1.0]
    for s, p in zip(group.streams, plain.streams):  # the other samples are routed as in generative mode
        assert torch.equal(s.latent[1:], p.latent)
    for t, p in zip(group.targets, plain.targets):
        assert torch.equal(t[1:], p)


def test_one_step_l2_and_l1_losses_by_hand():
    """m0 = [1, -2, 0.5, 3], v_hat = [-1.5, 2, 0, -1]: x0_hat = -v_hat = [1.5, -2, 0, 1], error
    x0_hat - m0 = [0.5, 0, -0.5, -2]: L2 = (0.25 + 0 + 0.25 + 4) / 4 = 1.125, L1 = (0.5 + 0 + 0.5 + 2) / 4 = 0.75."""
    m0 = torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 1, 2, 2)
    v_hat = torch.tensor([-1.5, 2.0, 0.0, -1.0]).view(1, 1, 2, 2)
    rgb = torch.zeros(3, 1, 1, 2, 2)
    noise = torch.ones(1, 1, 2, 2)
    routes = [Route("estimate", "depth", 0.0, 1.0, False, False, deterministic=True),
              Route("joint", "depth", 0.5, 0.5, False, False),
              Route("estimate", "depth", 0.0, 1.0, False, False, deterministic=True)]
    for loss, expected in (("l2", 1.125), ("l1", 0.75)):
        config = RoutingConfig(estimate_mode="one_step", estimate_loss={"depth": loss})
        (group,) = route_batch(config, routes, rgb, [m0] * 3, [(noise, noise)] * 3, ["", "", ""], fake_text)
        preds = [torch.zeros(3, 1, 1, 2, 2), v_hat.expand(3, -1, -1, -1, -1).clone()]
        losses = flow_loss(preds, group)
        assert losses[0] == pytest.approx(expected) and losses[2] == pytest.approx(expected)
        # the joint sample keeps the MSE on both streams: rgb target eps - 0 = 1, modality eps - m0
        joint = ((preds[0][1] - 1).pow(2).mean() + (v_hat - (noise - m0)).pow(2).mean()) / 2
        assert losses[1] == pytest.approx(float(joint))
    # another modality's estimates keep the default (l2)
    config = RoutingConfig(estimate_mode="one_step", estimate_loss={"flow": "l1"})
    (group,) = route_batch(config, routes[:1], rgb[:1], [m0], [(noise, noise)], [""], fake_text)
    assert flow_loss([torch.zeros(1, 1, 1, 2, 2), v_hat], group)[0] == pytest.approx(1.125)


def test_bad_estimate_options_are_clear_errors():
    with pytest.raises(ValueError, match="estimate_mode='single'.*generative.*one_step"):
        RoutingConfig(estimate_mode="single")
    with pytest.raises(ValueError, match="estimate_loss: unknown modalities \\['normals'\\]"):
        RoutingConfig(estimate_mode="one_step", estimate_loss={"normals": "l1"})
    with pytest.raises(ValueError, match="estimate_loss: \\{'depth': 'huber'\\}.*'l2', 'l1'"):
        RoutingConfig(estimate_mode="one_step", estimate_loss={"depth": "huber"})
    with pytest.raises(ValueError, match="applies to estimate_mode=one_step only"):
        RoutingConfig(estimate_loss={"depth": "l1"})


def test_one_task_table_drives_training_routes_and_inference_plans():
    """Training's routes and the pipeline's stream plans read the same table: a stream is noisy in
    training exactly when the pipeline generates it."""
    from unityvideo.flow import TASK_TABLE, RoutingConfig, validation_route
    from unityvideo.pipeline import TASKS as PIPELINE_TASKS
    from unityvideo.pipeline import plan_streams

    assert set(PIPELINE_TASKS) == set(TASK_TABLE)
    requests = {"t2v": ((), ()), "joint": (("depth",), ()), "control": ((), ("depth",)), "estimate": (("depth",), ("rgb",))}
    for name, task in TASK_TABLE.items():
        route = validation_route(RoutingConfig(), name, "depth" if task.has_modality else None, 0.5)
        plan = plan_streams(name, *requests[name])
        assert plan.targets[0] == task.noisy_rgb == route.noisy_rgb == (route.t_rgb > 0)
        if task.has_modality:
            assert plan.targets[1] == task.noisy_modality == route.noisy_modality == (route.t_modality > 0)
            assert plan.condition_names == ((("rgb",) if task.condition == "rgb" else ("depth",)) if task.condition else ())
        else:
            assert plan.streams == ("rgb",) and route.modality is None
