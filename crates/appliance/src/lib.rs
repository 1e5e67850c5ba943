//! The atrest appliance: workflow, web admin and REST API.
