"""The API: the custom resources' types (pydantic models), their durations and the CRD schema."""
