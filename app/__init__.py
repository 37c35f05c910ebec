"""MONAI Deploy application: DL enhancement and quality check of accelerated cervical-spine MR."""
