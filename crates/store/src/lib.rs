//! The appliance content stores on an atrest volume.
