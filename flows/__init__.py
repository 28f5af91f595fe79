"""Prefect flows for the HiP pipeline; the entry flow is `flows.hip_flow.hip` (deployments hip/<stage>)."""
