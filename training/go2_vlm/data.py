"""Training data of the Go2 VLM pair: simulator rollouts (expert- or learner-driven) labelled by
the expert, rendered and preprocessed once into fixed-layout tensors."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from specdec.models.prompting import TURNED_AROUND_DEG

from .config import TrainConfig, prompt_template
from .pair import (IMAGE_H, IMAGE_W, MERGE, NUMBER_WORDS, PATCH, bgr_to_rgb, build_processor,
                   build_tokenizer, prompt_text)


COMBOS = [(c, sh) for c in ("red", "green", "blue", "yellow") for sh in ("ball", "box")]
# The instruction for each of COMBOS, worded as go2_sim.episode.instruction_for words it.
INSTRUCTIONS = tuple(f"go to the {colour} {shape}" for colour, shape in COMBOS)


def twin_of(colour: str, shape: str) -> tuple:
    """The look-alike of an object: same colour, the other shape."""
    return colour, "box" if shape == "ball" else "ball"

# relocate_free_m: share of the frames' visible-object samples also labelled after the other count of
# turning (the answer is the same: a full circle matters only while the object is not in the picture)
RELOCATE_FLIP_PROB = 0.25
REGION_MIN_PIXELS = 8  # camera pixels (of 160x120) of an object for it to count as present (regions, visibility)


def region_labels(env, info) -> np.ndarray:
    """[merged image tokens, 8] presence of each colour+shape in each token's region of the frame."""
    rows, cols = IMAGE_H // (PATCH * MERGE), IMAGE_W // (PATCH * MERGE)
    h, w = info.ids.shape
    ys = np.linspace(0, h, rows + 1).round().astype(int)
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    out = np.zeros((rows * cols, len(COMBOS)), dtype=bool)
    for k, obj in enumerate(env.world.objects):
        mask = info.ids == k
        if not mask.any():
            continue
        combo = COMBOS.index((obj.color, obj.shape))
        for r in range(rows):
            for c in range(cols):
                if np.count_nonzero(mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]) >= REGION_MIN_PIXELS:
                    out[r * cols + c, combo] = True
    return out


@dataclass(frozen=True)
class DataJob:
    """One worker's chunk of rollouts (:func:`data_jobs`): everything that decides its data."""

    seed: int                # rollout seed of the chunk (depends on the chunk's number only)
    episodes: int
    perturb_prob: float      # executed action replaced by a random one (the label stays the expert's)
    supersample: int         # camera anti-aliasing
    blocked_prob: float      # episodes that start behind another object
    near_prob: float         # ... close to an object
    absent_twins: bool       # also label the visible objects' absent twins (answer: the search turn)
    learner_driven: bool     # the learner set by :func:`set_rollout_policy` drives (DAgger), not the expert
    turn_step_deg: float = 1.0  # label magnitudes on this grid (:func:`coarse_action`)
    move_step_m: float = 0.05
    search_walk_m: float = 0.0  # > 0: an object not in the picture is answered by the walking search
    bump_prob: float = 0.0   # decisions near an obstacle that walk into it (go2_sim.dataset.rollouts)
    prompt_template: str = ""  # the prompt around the instruction (config.prompt_template)
    relocate_free_m: float = 0.0  # > 0: an object not in the picture is answered by the search that walks on
                                  # after a full circle (ExpertConfig.relocate_free_m); prompts say {turned}
    seen_min_pixels: int = REGION_MIN_PIXELS  # ... and so is one covering fewer camera pixels than this


def prompt_ids(processor, instruction: str, n_image: int) -> List[int]:
    """Token ids of the prompt for ``instruction`` with ``n_image`` image tokens, exactly as the
    processor (and so the adapter at inference) lays it out."""
    text = prompt_text(processor, instruction).replace("<|image_pad|>", "<|image_pad|>" * n_image)
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def coarse_action(action: str, turn_step_deg: float, move_step_m: float) -> str:
    """``action`` with its magnitude rounded to the nearest multiple of the step of its unit (at
    least one step). A coarser grid than the expert's (1 deg, 0.05 m) costs the robot little -
    the next decision corrects what is left - and leaves the models fewer near-ties to break
    differently: every differently broken tie is a rejected draft token."""
    from go2_vlm_control.action_language import VERBS, format_action

    verb, _, value = action.partition(" ")
    unit = VERBS.get(verb, ("", ""))[1]
    if not value or unit not in ("deg", "m"):
        return action
    step = turn_step_deg if unit == "deg" else move_step_m
    return format_action(verb, max(1, math.floor(float(value) / step + 0.5 + 1e-9)) * step)  # halves round up


def job_rollouts(job: DataJob, policy=None, with_info: bool = False):
    """:func:`go2_sim.dataset.rollouts` of ``job`` (``policy``: who drives, None: the expert)."""
    from go2_sim.camera import CameraConfig
    from go2_sim.dataset import rollouts

    return rollouts(job.episodes, job.seed, perturb_prob=job.perturb_prob,
                    camera_config=CameraConfig(supersample=job.supersample), blocked_prob=job.blocked_prob,
                    near_prob=job.near_prob, policy=policy, with_info=with_info, bump_prob=job.bump_prob)


def _gen_chunk(job: DataJob):
    """Worker: ``job.episodes`` rollouts -> frames (patches, object regions) and samples.

    Every frame is labelled for *every* object in the room as the instructed one (the expert's
    action for that object from the same state): the same image with different instructions and
    different answers, which is what teaches the models to read the instruction.
    """
    torch.set_num_threads(1)
    from specdec.models.images import to_pil

    from go2_sim.episode import instruction_for
    from go2_sim.expert import ExpertConfig, _blocker, expert_action, in_view, search_action, search_turn

    expert_cfg = ExpertConfig()
    search_cfg = ExpertConfig(search_walk_m=job.search_walk_m, relocate_free_m=job.relocate_free_m)
    camera_search = job.search_walk_m > 0.0 or job.relocate_free_m > 0.0
    flip_rng = np.random.default_rng([job.seed, 0x7E5])
    search = search_turn(expert_cfg)
    proc = build_processor(template=job.prompt_template)
    frames: Dict[str, list] = {"pix": [], "regions": [], "episode": [], "objects": [], "blocked": []}
    samples: Dict[str, list] = {"frame": [], "ids": [], "action": [], "combo": [], "state": [], "true": [],
                                "in_view": [], "absent": []}
    for env, ep, _seed, _step, image, info, label in job_rollouts(
            job, _ROLLOUT_POLICY if job.learner_driven else None, with_info=True):
        batch = proc(text=[prompt_text(proc, env.prompt(job.prompt_template))], images=[to_pil(bgr_to_rgb(image))],
                     return_tensors="pt")
        n_image = int(batch["image_grid_thw"][0].prod()) // (MERGE * MERGE)
        frame = len(frames["pix"])
        frames["pix"].append(batch["pixel_values"].numpy().astype(np.float16))
        frames["regions"].append(region_labels(env, info))
        frames["episode"].append(ep)
        frames["objects"].append(sorted(COMBOS.index((o.color, o.shape)) for o in env.world.objects))
        frames["blocked"].append(env.last_move_blocked)
        true_target = env.target
        try:
            for obj in env.world.objects:
                env.target = obj
                hidden = info.visible_pixels.get(obj.name, 0) < job.seen_min_pixels
                in_sight = in_view(env, expert_cfg.fov_margin_deg)
                turns = [env.turned_deg]
                if job.relocate_free_m > 0.0 and (hidden or flip_rng.random() < RELOCATE_FLIP_PROB):
                    # the same frame after the other count of turning: rollouts seldom turn a full
                    # circle, and a hidden object's answer is what changes with it
                    turns.append(0.0 if env.turned_deg >= TURNED_AROUND_DEG else TURNED_AROUND_DEG)
                for turned in turns:
                    seen = in_sight
                    if camera_search and hidden:
                        # Not in the picture (out of view, hidden behind another object or too small):
                        # the answer is the search the camera can show, not the path the expert plans.
                        action, seen = search_action(env, search_cfg, turned), True
                    elif obj is true_target:
                        action = label
                    elif seen:
                        action = expert_action(env, expert_cfg)
                    elif _blocker(env, env.world.cfg.robot_radius, expert_cfg.clearance) is None:
                        action = search  # what expert_action answers here, without planning a path
                    else:
                        continue  # out of view and the expert would follow a planned path: not observable
                    action = coarse_action(action, job.turn_step_deg, job.move_step_m)
                    ids = prompt_ids(proc, env.prompt(job.prompt_template, instruction_for(obj), turned), n_image)
                    if obj is true_target and turned == env.turned_deg:
                        assert ids == batch["input_ids"][0].tolist(), "prompt ids differ from the processor's"
                    samples["frame"].append(frame)
                    samples["ids"].append(np.asarray(ids, dtype=np.int32))
                    samples["action"].append(action)
                    samples["combo"].append(COMBOS.index((obj.color, obj.shape)))
                    samples["state"].append((float(not hidden), math.degrees(env.bearing()), env.surface_distance()))
                    samples["true"].append(obj is true_target)
                    samples["in_view"].append(seen)
                    samples["absent"].append(False)
            if job.absent_twins:
                # The visible objects' twins that are not in the room (same colour, other shape): the
                # answer is the search turn. Without these the colour alone predicts most answers and
                # the shape word is never needed; with them every frame that shows a red ball also
                # says what "go to the red box" means here.
                present = {(o.color, o.shape) for o in env.world.objects}
                for obj in env.world.objects:
                    twin = twin_of(obj.color, obj.shape)
                    if twin in present or info.visible_pixels.get(obj.name, 0) < REGION_MIN_PIXELS:
                        continue
                    present.add(twin)
                    samples["frame"].append(frame)
                    twin_prompt = env.prompt(job.prompt_template, INSTRUCTIONS[COMBOS.index(twin)])
                    samples["ids"].append(np.asarray(prompt_ids(proc, twin_prompt, n_image), dtype=np.int32))
                    samples["action"].append(coarse_action(search, job.turn_step_deg, job.move_step_m))
                    samples["combo"].append(COMBOS.index(twin))
                    samples["state"].append((0.0, 0.0, 1.0))
                    samples["true"].append(False)
                    samples["in_view"].append(False)
                    samples["absent"].append(True)
        finally:
            env.target = true_target
    return {"frames": frames, "samples": samples, "grid": batch["image_grid_thw"][0].tolist()}


@dataclass
class Go2Data:
    """Fixed-layout training tensors (all prompts have the same length). Frames are stored once;
    each sample is (frame, instruction, expert answer)."""

    ids: torch.Tensor          # [N, L + A - 1] prompt + answer[:-1] (padded)
    targets: torch.Tensor      # [N, A] answer tokens (eos included), -100 = padding
    frame: torch.Tensor        # [N] index into pix / regions
    pix: torch.Tensor          # [F, patches, C*T*P*P] float16
    grid: List[int]            # image_grid_thw of every frame
    prompt_len: int
    actions: List[str]
    held_out: torch.Tensor     # [N] bool (whole episodes)
    soft: Optional[torch.Tensor] = None     # [N, V] smoothed target of the number position (zeros: none)
    regions: Optional[torch.Tensor] = None  # [F, image tokens, 8] objects present per image token (aux)
    state: Optional[torch.Tensor] = None    # [N, 3] target visible, bearing deg, surface distance m (aux)
    combo: Optional[torch.Tensor] = None    # [N] index in COMBOS of the instructed object (aux)
    true_target: Optional[torch.Tensor] = None  # [N] bool: the episode's own target (the rollout's)
    observable: Optional[torch.Tensor] = None   # [N] bool: in view, or the answer is the search turn
    absent: Optional[torch.Tensor] = None       # [N] bool: the instructed object is not in the room

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def answer_len(self) -> int:
        return int(self.targets.shape[1])

    @staticmethod
    def concat(parts: List["Go2Data"]) -> "Go2Data":
        """One data set of ``parts`` (same prompt layout): frames stacked, frame indices shifted."""
        from dataclasses import fields

        first = parts[0]
        if any(p.prompt_len != first.prompt_len or p.grid != first.grid for p in parts):
            raise ValueError("parts of different prompt layouts")
        per_frame = {"pix", "regions"}
        offsets = torch.cumsum(torch.tensor([0] + [int(p.pix.shape[0]) for p in parts[:-1]]), 0)
        joined = {}
        for f in fields(Go2Data):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "frame":
                joined[f.name] = torch.cat([v + int(o) for v, o in zip(values, offsets)])
            elif f.name == "actions":
                joined[f.name] = [a for v in values for a in v]
            elif isinstance(values[0], torch.Tensor) and all(isinstance(v, torch.Tensor) for v in values):
                joined[f.name] = torch.cat(values)
            elif f.name in per_frame or isinstance(values[0], torch.Tensor):
                joined[f.name] = None  # not in every part
            else:
                joined[f.name] = values[0]
        return Go2Data(**joined)

    def to(self, device) -> "Go2Data":
        """A copy with every tensor on ``device`` (training on a GPU keeps the whole set there)."""
        from dataclasses import fields, replace

        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)


TWIN_CLOSE_TOKENS = 3  # image tokens showing the instructed object's same-colour twin: "close to the twin"


SMALL_OBJECT_TOKENS = 2  # image tokens showing the instructed object, at most: "a few pixels of it in view"


def object_tokens(data: "Go2Data", combo: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[N] image tokens of each sample's frame that show ``combo`` (an index in COMBOS per
    sample; default: the instructed object)."""
    combo = data.combo if combo is None else combo
    regions = data.regions[data.frame]                                       # [N, T, 8]
    return regions[torch.arange(len(data), device=regions.device), :, combo].sum(-1)


def twin_tokens(data: "Go2Data") -> torch.Tensor:
    """[N] image tokens of each sample's frame that show the instructed object's same-colour,
    other-shape twin (the look-alike a policy must not stop at)."""
    twin = torch.tensor([COMBOS.index(twin_of(c, sh)) for c, sh in COMBOS], device=data.combo.device)
    return object_tokens(data, twin[data.combo])


def training_rows(data: "Go2Data", other_hidden_frac: float, seed: int, rare_repeat: int = 1,
                  boundary_repeat: int = 1, small_repeat: int = 1) -> torch.Tensor:
    """Rows to train on: every sample of the episodes' own targets and of visible objects, and a
    fraction of the (plentiful, all alike: "left 60") samples whose instructed object is out of view.
    Samples whose answer depends on what the camera cannot see (the expert following a planned
    path to an object out of view) are left out: no image-conditioned policy can imitate them.

    Rare samples are repeated: strafes ``rare_repeat`` times, and the samples at the "done"
    boundary ``boundary_repeat`` times: answer ``done``, or the instructed object's twin close in
    view (few in rollouts, and where an under-trained policy says done at the wrong object); and
    ``small_repeat`` times the samples whose instructed object is in the picture but small (at most
    ``SMALL_OBJECT_TOKENS`` image tokens: far away, or a sliver beside the object hiding it), where
    a one-frame policy must notice a few pixels or search past it."""
    gen = torch.Generator().manual_seed(seed)
    keep = data.true_target | (data.state[:, 0] > 0) | (torch.rand(len(data), generator=gen) < other_hidden_frac)
    if data.absent is not None:
        keep |= data.absent
    if data.observable is not None:
        keep &= data.observable
    rows = torch.nonzero(keep & ~data.held_out).flatten()
    extra = []
    if rare_repeat > 1:
        rare = torch.tensor([data.actions[int(r)].startswith("strafe") for r in rows], dtype=torch.bool)
        extra += [rows[rare]] * (rare_repeat - 1)
    if boundary_repeat > 1:
        close = twin_tokens(data)[rows].cpu() >= TWIN_CLOSE_TOKENS
        done = torch.tensor([data.actions[int(r)] == "done" for r in rows], dtype=torch.bool)
        extra += [rows[close | done]] * (boundary_repeat - 1)
    if small_repeat > 1:
        small = (data.state[rows, 0] > 0) & (object_tokens(data)[rows].cpu() <= SMALL_OBJECT_TOKENS)
        extra += [rows[small]] * (small_repeat - 1)
    return torch.cat([rows] + extra) if extra else rows


def _on_grid(value: float, step: float) -> bool:
    return abs(value / step - round(value / step)) < 1e-6


def _number_groups(tok, turn_step_deg: float, move_step_m: float) -> Dict[str, Dict[int, float]]:
    """Token id -> value for the degree tokens and the metre tokens on the label grid."""
    deg = {tok.convert_tokens_to_ids(str(i)): float(i) for i in range(1, 91) if _on_grid(i, turn_step_deg)}
    metres = {tok.convert_tokens_to_ids(w): float(w) for w in NUMBER_WORDS
              if ("." in w or w == "1") and _on_grid(float(w), move_step_m)}
    return {"deg": deg, "m": metres}


def _soft_number(tok, verb: str, number_id: int, cfg: TrainConfig) -> Optional[torch.Tensor]:
    from go2_vlm_control.action_language import VERBS

    groups = _number_groups(tok, cfg.turn_step_deg, cfg.move_step_m)
    sigma_deg, sigma_m = cfg.sigma_deg, cfg.sigma_m
    unit = VERBS.get(verb, ("", ""))[1]
    group, sigma = (groups["deg"], sigma_deg) if unit == "deg" else (groups["m"], sigma_m)
    if not unit or sigma <= 0 or number_id not in group:
        return None
    centre = group[number_id]
    soft = torch.zeros(len(tok))
    for tid, value in group.items():
        soft[tid] = math.exp(-0.5 * ((value - centre) / sigma) ** 2)
    return soft / soft.sum()


# The learner driving DAgger rollouts; set in the parent before the data workers fork.
_ROLLOUT_POLICY = None


def set_rollout_policy(model, processor, template: str = "") -> None:
    """Let ``model`` (greedy, through its adapter, prompted by ``template``) drive the rollouts of
    learner-driven data jobs."""
    global _ROLLOUT_POLICY
    from specdec.models.adapters import wrap_model

    from .evaluate import greedy_policy

    _ROLLOUT_POLICY = greedy_policy(wrap_model(model.eval(), processor), template=template)


def chunk_count(cfg: TrainConfig, episodes: int) -> int:
    """How many chunk numbers (seeds) :func:`data_jobs` uses for ``episodes`` (none for none)."""
    return math.ceil(episodes / cfg.chunk) if episodes > 0 else 0


def data_jobs(cfg: TrainConfig, first_chunk: int, episodes: int, learner_driven: bool = False) -> List[DataJob]:
    """Data jobs of ``cfg.chunk`` episodes each, numbered from ``first_chunk`` (chunk k's seed and
    camera depend on k only, so the data are the same whatever the worker count)."""
    n_chunks = chunk_count(cfg, episodes)
    return [DataJob(seed=cfg.seed * 100_003 + k, episodes=min(cfg.chunk, episodes - (k - first_chunk) * cfg.chunk),
                    perturb_prob=cfg.perturb_prob,
                    supersample=2 if k % cfg.exact_camera_every == 0 else cfg.supersample,
                    blocked_prob=cfg.blocked_prob, near_prob=cfg.near_prob, absent_twins=cfg.absent_twins,
                    learner_driven=learner_driven, turn_step_deg=cfg.turn_step_deg, move_step_m=cfg.move_step_m,
                    search_walk_m=cfg.search_walk_m, bump_prob=cfg.bump_prob, prompt_template=prompt_template(cfg),
                    relocate_free_m=cfg.relocate_free_m, seen_min_pixels=cfg.seen_min_pixels)
            for k in range(first_chunk, first_chunk + n_chunks)]


def collect_chunks(jobs: List[DataJob], workers: int, desc: str = "go2 data (chunks)", progress: bool = True) -> list:
    import multiprocessing as mp

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    results = []
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for res in pool.imap(_gen_chunk, jobs):
                results.append(res)
                bar.update(1)
    else:
        for job in jobs:
            results.append(_gen_chunk(job))
            bar.update(1)
    bar.close()
    return results


def expert_chunks(cfg: TrainConfig, progress: bool = True) -> list:
    """The expert rollouts of ``cfg`` (:func:`collect_chunks` of its :func:`data_jobs`).

    ``GO2_VLM_DATA_CACHE`` (development only) names a file that keeps them between runs; it is
    reused only for the same jobs, image size and patching, else regenerated and overwritten.
    """
    jobs = data_jobs(cfg, 0, cfg.episodes)
    key = repr((jobs, IMAGE_W, IMAGE_H, PATCH, MERGE))
    cache = os.environ.get("GO2_VLM_DATA_CACHE")
    if cache and os.path.isfile(cache):
        saved = torch.load(cache, weights_only=False)
        if isinstance(saved, dict) and saved.get("key") == key:
            return saved["chunks"]
    chunks = collect_chunks(jobs, cfg.workers, progress=progress)
    if cache:
        torch.save({"key": key, "chunks": chunks}, cache)
    return chunks


def make_dataset(cfg: TrainConfig, progress: bool = True, log=print) -> Go2Data:
    """Expert rollouts rendered by the simulator's camera, preprocessed once (see :func:`_gen_chunk`)."""
    return assemble_dataset(expert_chunks(cfg, progress), cfg, log)


@dataclass
class Frames:
    """The frames of a list of chunks, stacked: image patches, object regions, held-out flags."""

    pix: torch.Tensor       # [F, patches, C*T*P*P] float16
    regions: torch.Tensor   # [F, image tokens, 8] bool
    held_out: torch.Tensor  # [F] bool (whole episodes)
    objects: List[List[int]]  # per frame: the COMBOS indices of the objects in the room
    first: List[int]        # index of each chunk's first frame
    grid: List[int]         # image_grid_thw of every frame
    blocked: torch.Tensor   # [F] bool: the motion before the frame stalled (the prompt's {last_move})

    def __len__(self) -> int:
        return int(self.pix.shape[0])


def stack_frames(results: list, cfg: TrainConfig) -> Frames:
    """:class:`Frames` of the chunks of :func:`collect_chunks` (chunk k holds episodes k*chunk..;
    every ``held_out_every``-th episode is held out)."""
    pix, regions, held, objects, first, blocked = [], [], [], [], [], []
    for k, res in enumerate(results):
        fr = res["frames"]
        first.append(len(pix))
        pix.extend(fr["pix"])
        regions.extend(fr["regions"])
        held.extend((k * cfg.chunk + ep) % cfg.held_out_every == cfg.held_out_every - 1 for ep in fr["episode"])
        objects.extend(fr["objects"])
        blocked.extend(fr["blocked"])
    return Frames(torch.from_numpy(np.stack(pix)), torch.from_numpy(np.stack(regions)), torch.tensor(held),
                  objects, first, results[0]["grid"], torch.tensor(blocked, dtype=torch.bool))


def assemble_dataset(results: list, cfg: TrainConfig, log=print) -> Go2Data:
    """Fixed-layout tensors of the expert-labelled samples in the chunks of :func:`collect_chunks`."""
    from go2_sim.expert import search_turn

    tok = build_tokenizer(prompt_template(cfg))
    eos = tok.eos_token_id
    frames = stack_frames(results, cfg)
    prompts, answers, frame, actions, combos, state, true, seen, absent = [], [], [], [], [], [], [], [], []
    for k, res in enumerate(results):
        sa = res["samples"]
        base = frames.first[k]
        for f, ids, action in zip(sa["frame"], sa["ids"], sa["action"]):
            ans = tok(action, add_special_tokens=False)["input_ids"] + [eos]
            if tok.unk_token_id in ans:
                raise ValueError(f"action {action!r} does not tokenize")
            prompts.append(ids)
            answers.append(ans)
            frame.append(base + f)
            actions.append(action)
        combos.extend(sa["combo"])
        state.extend(sa["state"])
        true.extend(sa["true"])
        seen.extend(sa["in_view"])
        absent.extend(sa["absent"])
    lengths = {len(p) for p in prompts}
    if len(lengths) != 1:
        raise ValueError(f"prompts of different lengths {sorted(lengths)}")
    prompt_len = lengths.pop()
    A = max(len(a) for a in answers)
    n = len(prompts)
    ids = torch.full((n, prompt_len + A - 1), tok.pad_token_id, dtype=torch.long)
    targets = torch.full((n, A), -100, dtype=torch.long)
    soft = torch.zeros(n, len(tok))
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, :prompt_len] = torch.from_numpy(p.astype(np.int64))
        ids[i, prompt_len:prompt_len + len(a) - 1] = torch.tensor(a[:-1])
        targets[i, :len(a)] = torch.tensor(a)
        if len(a) == 3:
            s = _soft_number(tok, actions[i].split(" ")[0], a[1], cfg)
            if s is not None:
                soft[i] = s
    frame_t = torch.tensor(frame)
    data = Go2Data(ids=ids, targets=targets, frame=frame_t, pix=frames.pix, grid=frames.grid, prompt_len=prompt_len,
                   actions=actions, held_out=frames.held_out[frame_t], soft=soft, regions=frames.regions,
                   state=torch.tensor(state, dtype=torch.float32),
                   combo=torch.tensor(combos), true_target=torch.tensor(true))
    search = search_turn()
    data.observable = torch.tensor(seen) | torch.tensor([a == search for a in actions])
    data.absent = torch.tensor(absent, dtype=torch.bool)
    verbs: Dict[str, int] = {}
    for a in actions:
        verbs[a.split(" ")[0]] = verbs.get(a.split(" ")[0], 0) + 1
    log(f"go2 data: {len(frames)} frames, {n} samples ({int(data.held_out.sum())} held out), prompt {prompt_len} "
        f"tokens, answers <= {A} tokens, verbs {verbs}")
    return data


# -- training -----------------------------------------------------------------------------------
