"""The RL maths of the search strategies (``hirl``, its ablations, ``amc``, ``haq``) and the
surrogate they share with ``sls``: plain torch modules and numpy functions, no Optuna.

================ =====================================================================
module           holds
================ =====================================================================
``layout``       how a space's dimensions map onto model blocks and kernels
``state``        kernel/block features (layer statistics) and the Fisher prior part
``recon``        per-kernel reconstruction error under a candidate compression
``reward``       exact kernel costs, objective roles, reward weights, scalarization
``objective``    goals, surrogate data and rewards for one study
``surrogate``    the MLP ensemble (mean and disagreement)
``ppo``          slot policies (shared with block embedding / per block) and PPO
``allocation``   the high level: ensemble of allocation agents with voting, or none
``hierarchy``    hierarchical rollouts and training
``critic``       reward parts (surrogate / real) and curricula
``proposals``    proposal sources (agents, greedy, mutation, random) and the pick
``persist``      the saved-state format of the learned parts (warm start on another model)
``options``      strategy options routed onto config and parts
``flat``         the layer-by-layer MDP of ``amc`` / ``haq``
``ddpg``         DDPG actor-critic of ``amc`` / ``haq``
================ =====================================================================
"""
