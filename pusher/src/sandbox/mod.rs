//! Placeholder: the WeChat API sandbox lands here.
