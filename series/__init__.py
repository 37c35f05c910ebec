"""DICOM series input rules: frame views of any MR storage class and the header rules that name each series' role."""
