;;; emacs-lookup.el --- what Emacs's auth-source answers for one lookup
;;
;; emacs --batch -Q -l emacs-lookup.el FILE HOST PORT [USER]
;;
;; Asks auth-source for the entry smtpmail ends up with (:host :port
;; :user :max 1) with FILE as the only source: one that has a password
;; (:require '(:secret)), as smtpmail asks again when its first answer
;; lacks one; when no entry has a password, the first match, whose
;; missing password smtpmail would then prompt for.  (smtpmail's second
;; search requires :user too and keeps the first answer's login; asking
;; for the entry with the secret is the consistent reading of it.)
;; Prints one line: "found LOGIN PASSWORD" (each as a Lisp string, or
;; nil; a gpg: token decrypted, as auth-source does), "none", or "error
;; MESSAGE" when Emacs signals an error.  PORT "-" means none, USER "*",
;; "" or absent means any.  Used to check the Emacs column of cases.tsv
;; (see verify-emacs.sh).

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
      (let* ((spec (append (list :host host :max 1)
                           (and port (list :port port))
                           (and user (list :user user))))
             (r (or (car (apply #'auth-source-search
                                (append spec (list :require '(:secret)))))
                    (car (apply #'auth-source-search spec))))
             (secret (plist-get r :secret)))
        (when (functionp secret) (setq secret (funcall secret)))
        (if r
            (princ (format "found %S %S\n" (plist-get r :user) secret))
          (princ "none\n")))
    (error (princ (format "error %S\n" (error-message-string err))))))
