"""A run that sets some fields of a resource keeps the others as the code location built them.

Dagster gives a ``ConfigurableResource`` built with values (here: from the environment, in
``definitions.py``) a config schema whose *whole* default is those values, while each field
keeps its class default. A run config that names the resource replaces the whole default, so
setting one field (``{"resources": {"kafka": {"config": {"topic_partitions": 3}}}}``) silently
brought every other field back to the class default: the replay went to ``localhost:9092``.
"""

from typing import Any

from dagster import Field

# Private, but the one type Dagster builds a resource's definition from (see below).
from dagster._core.definitions.definition_config_schema import DefinitionConfigSchema


class BuiltValuesAreDefaults:
    """Mixin, first base of a ``ConfigurableResource`` / ``ConfigurableIOManager``: every value
    the resource was built with becomes the default of its own config field, so a run config
    that sets some fields keeps the rest, and the launchpad shows them as the defaults.

    An ``EnvVar`` value stays ``{"env": NAME}`` (read when the run starts): the schema, and so
    the UI, shows the variable's name, never a secret.
    """

    def __init__(self, **data: Any):
        super().__init__(**data)
        # Dagster's own per-resource state (1.13): the schema it inferred from the class, and
        # the built values as config (EnvVar as {"env": NAME}), from which it curries defaults.
        state = self._state__internal__
        built = state.resolved_config_dict
        shape = state.schema.config_type
        fields = {
            name: field if name not in built else _with_default(field, built[name])
            for name, field in shape.fields.items()
        }
        schema = Field(type(shape)(fields), description=state.schema.description)
        config_schema = DefinitionConfigSchema(
            Field(schema.config_type, default_value=built, is_required=False, description=schema.description)
        )
        self._state__internal__ = state._replace(schema=schema, config_schema=config_schema)


def _with_default(field: Field, value: Any) -> Field:
    return Field(
        field.config_type,
        default_value=value,
        is_required=False,
        description=field.description,
        is_secret=field.is_secret,
    )
