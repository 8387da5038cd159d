"""The spaces' errors. Bad bounds are ValueError/TypeError naming the parameter (raised where bounds are
built); a point that cannot be built is InfeasibleConfig."""


class InfeasibleConfig(ValueError):
    """A point of a space that cannot be built (e.g. the feature map shrinks to nothing, or the trunk has
    fewer blocks than asked to unfreeze). A trial that draws one is pruned, not failed."""
