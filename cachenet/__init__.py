"""cachenet: split inference between a device-side cache model and a cloud full model."""

__version__ = "0.1.0"
