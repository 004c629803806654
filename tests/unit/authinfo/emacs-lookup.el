;;; emacs-lookup.el --- what Emacs's auth-source answers for one lookup
;;
;; emacs --batch -Q -l emacs-lookup.el FILE HOST PORT [USER]
;;
;; Asks auth-source the way smtpmail's first attempt does (:host :port
;; :user :max 1, no :require) with FILE as the only source, and prints one
;; line: "found LOGIN PASSWORD" (each as a Lisp string, or nil), "none",
;; or "error MESSAGE" when Emacs signals an error.  PORT "-" means none,
;; USER "*", "" or absent means any.  Used to check the Emacs column of
;; cases.tsv (see verify-emacs.sh).

(require 'auth-source)
(let* ((args command-line-args-left)
       (file (nth 0 args))
       (host (nth 1 args))
       (port (nth 2 args))
       (user (nth 3 args))
       (auth-sources (list file))
       (auth-source-do-cache nil))
  (setq command-line-args-left nil)
  (when (equal port "-") (setq port nil))
  (when (member user (quote ("" "*"))) (setq user nil))
  (condition-case err
      (let* ((r (car (apply #'auth-source-search
                            (append (list :host host :max 1)
                                    (and port (list :port port))
                                    (and user (list :user user))))))
             (secret (plist-get r :secret)))
        (when (functionp secret) (setq secret (funcall secret)))
        (if r
            (princ (format "found %S %S\n" (plist-get r :user) secret))
          (princ "none\n")))
    (error (princ (format "error %S\n" (error-message-string err))))))
