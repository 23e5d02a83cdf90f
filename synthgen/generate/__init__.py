"""Generate stage: image backends (shaded CG now; ControlNet diffusion plugs in beside it)."""
