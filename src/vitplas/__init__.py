"""vitplas: plasticity of vision transformer components and component-wise finetuning."""

__version__ = "0.1.0"
