"""The agent of an ``[agent]`` study: trained into the run folder (or loaded), its policy task,
the default hypervolume reference of ``return``, and the checks of ``compsearch check``.

* **The agent.** Without ``agent.path`` the recipe is trained once with SB3 on the CPU,
  seeded by ``agent.seed``, and cached as ``<run>/base/<hash>.zip`` (hash of the recipe
  and the torch / SB3 / gymnasium versions; :func:`~compsearch.evaluators.agents.train_agent`)
  beside ``<hash>.json`` (the recipe and the training seconds) -- as the base model of a
  classification study. With ``agent.path`` the user's SB3 file is read without
  unpickling (:func:`~compsearch.evaluators.agents.load_agent`).
* **The task.** ``PolicyTask.from_agent(agent, config=spec.task.config())``: the acting
  network is the model every strategy compresses; ``return`` is measured on
  ``task.episodes`` validation seeds.
* **Reference point of ``return``** (when ``reference_point.return`` and
  ``constraints.min_return`` are both absent): the mean return of uniformly random
  actions over the validation seeds (:meth:`PolicyTask.random_return`): a policy no
  better than chance adds no hypervolume. Its normalisation scale is the uncompressed
  agent's validation return minus the reference (when positive, else ``|reference|``), so
  a return gain of 1 is the whole gap from the reference to the uncompressed agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from compsearch.errors import CompsearchError, SpecError

if TYPE_CHECKING:
    from compsearch.evaluators.agents import Agent
    from compsearch.evaluators.policy_task import PolicyTask
    from compsearch.studies.spec import StudySpec

AGENT_DIR = "base"


def _agent_spec(spec: StudySpec) -> Any:
    if spec.agent is None:
        raise SpecError("agent: this spec compresses a classifier ([model]); it has no [agent] table")
    return spec.agent


def load_spec_agent(spec: StudySpec, out_dir: Path) -> tuple[Agent, dict[str, Any]]:
    """The spec's agent (trained into ``<out_dir>/base/`` once, or read from ``agent.path``)
    and what run.json records about it (``source``, ``path`` relative to the run folder or
    the user's file, ``hash`` of the acting network's weights, training ``seconds``)."""
    from compsearch.evaluators.agents import load_agent, train_agent
    from compsearch.evaluators.models import model_hash

    table = _agent_spec(spec)
    recipe = table.recipe()
    if table.path is not None:
        agent = load_agent(table.path, recipe)
        return agent, {"source": "file", "path": table.path, "hash": model_hash(agent.network())}
    agent = train_agent(recipe, out_dir / AGENT_DIR, device="cpu")
    meta = {k: v for k, v in agent.meta.items() if k != "recipe"}
    meta["path"] = (Path(AGENT_DIR) / Path(str(meta["path"])).name).as_posix()
    return agent, {**meta, "hash": model_hash(agent.network())}


def agent_task(spec: StudySpec, agent: Agent) -> PolicyTask:
    """The policy task of the spec's ``[task]`` table on ``agent``."""
    from compsearch.evaluators.policy_task import PolicyTask

    return PolicyTask.from_agent(agent, config=spec.task.config() if spec.task is not None else None)


def return_reference(spec: StudySpec, task: PolicyTask, base: float) -> tuple[dict[str, float], dict[str, float]]:
    """``(defaults, scales)`` of ``return`` for the hypervolume (module docstring): the default
    reference (random actions' validation return) when the spec gives none, and the scale;
    ``base`` is the uncompressed agent's validation return."""
    if "return" not in [m for m, _ in spec.objective_pairs]:
        return {}, {}
    if "return" in spec.reference_point:
        reference = float(spec.reference_point["return"])
    elif "min_return" in spec.constraints:
        reference = float(spec.constraints["min_return"])
    else:
        reference = float(task.random_return())
    scale = base - reference if base > reference else (abs(reference) or 1.0)
    return {"return": reference}, {"return": scale}


def prepare_agent(spec: StudySpec, out_dir: Path) -> tuple[torch.nn.Module, PolicyTask, dict[str, Any], dict[str, float],
                                                          dict[str, float]]:
    """Everything :func:`~compsearch.studies.run.prepare` needs of an agent study: the acting
    network (the model to compress), its policy task, what run.json records about the agent
    (with ``val_return``, the uncompressed network's validation return), and the reference
    defaults and scales of :func:`return_reference`."""
    agent, info = load_spec_agent(spec, out_dir)
    model = agent.network()
    task = agent_task(spec, agent)
    info["val_return"] = float(task.measure(model, "val")["return"])
    defaults, scales = return_reference(spec, task, info["val_return"])
    return model, task, info, defaults, scales


def check_agent(spec: StudySpec) -> tuple[torch.nn.Module, torch.Tensor]:
    """``compsearch check`` of ``[agent]`` without training: the environment exists and fits
    the algorithm, ``agent.hyper`` names only arguments of the SB3 class, an ``agent.path``
    file is an SB3 agent that fits the recipe. Returns the acting network (random weights,
    or the file's) and a ``2 x obs...`` example input (the first observation of seed 0, twice).

    Raises:
        ConfigError, ModelError: naming ``agent.env``, ``agent.algo``, ``agent.hyper`` or ``agent.path``.
    """
    from compsearch.evaluators.agents import (
        DEFAULT_HYPER,
        algo_class,
        load_agent,
        new_policy,
        policy_network,
    )
    from compsearch.evaluators.envs import check_spaces_fit, make_env
    from compsearch.evaluators.sb3_train import check_hyper

    table = _agent_spec(spec)
    recipe = table.recipe()
    env = make_env(recipe.env, recipe.env_kwargs)
    try:
        check_spaces_fit(recipe.algo, env, key="agent.env")
        check_hyper(algo_class(recipe.algo), {**DEFAULT_HYPER[recipe.algo], **recipe.hyper})
        obs = torch.as_tensor(env.reset(seed=0)[0]).float()
        if table.path is not None:
            net = load_agent(table.path, recipe).network()
        else:
            with torch.random.fork_rng(devices=[]):
                net = policy_network(new_policy(recipe, env), algo=recipe.algo)
    except (TypeError, ValueError) as e:
        if isinstance(e, CompsearchError):
            raise
        raise SpecError(f"agent: the recipe does not build an SB3 policy ({type(e).__name__}: {e})") from None
    finally:
        env.close()
    return net.eval(), torch.stack([obs, obs])


__all__ = ["AGENT_DIR", "agent_task", "check_agent", "load_spec_agent", "prepare_agent", "return_reference"]
