"""The Pulumi program: one stack per environment, one set of regional resources per region.

``__main__.py`` is what ``pulumi`` runs; :func:`infra.program.main` builds everything from
the stack's ``idra:`` config, validated by :mod:`idra.config`.
"""
