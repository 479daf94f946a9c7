"""The ImageServer operator: reconciles ImageServer resources and acts on SLO burn (the control plane)."""
