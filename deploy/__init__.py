"""Scale-out deployment artefacts for the MAP (issue 7): Kubernetes Job, MONAI Deploy Workflow Manager workflow."""
