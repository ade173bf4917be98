"""The runtime core: caches, target adapter, drafters, the decoding loop, sampling, policy, MoE accounting, loading.

Nothing here imports the surfaces (API, CLI) or the tooling (mlx_spec.tools)."""
