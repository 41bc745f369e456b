package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is the cluster's credentials, as files in dir: a CA, the API server's serving
// certificate (signed by it, valid for the `kubernetes` Service address and the control
// plane's underlay address), the service-account signing key pair, a token file with one
// admin token (group system:masters) and a kubeconfig carrying it.
type PKI struct {
	Dir         string
	CACert      string
	APICert     string
	APIKey      string
	SAKey       string
	SAPub       string
	TokenFile   string
	Token       string
	caPEM       []byte
	Kubeconfigs map[string]string
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// NewPKI writes the credentials for an API server at apiIP serving the Service address svcIP.
func NewPKI(dir, apiIP, svcIP string) (*PKI, error) {
	p := &PKI{
		Dir:       dir,
		CACert:    filepath.Join(dir, "ca.crt"),
		APICert:   filepath.Join(dir, "apiserver.crt"),
		APIKey:    filepath.Join(dir, "apiserver.key"),
		SAKey:     filepath.Join(dir, "sa.key"),
		SAPub:     filepath.Join(dir, "sa.pub"),
		TokenFile: filepath.Join(dir, "tokens.csv"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "weft-e2e-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(p.CACert, p.caPEM, 0o644); err != nil {
		return nil, err
	}

	apiKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	apiTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     now.Add(48 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local", "localhost"},
		IPAddresses: []net.IP{net.ParseIP(apiIP), net.ParseIP(svcIP), net.ParseIP("127.0.0.1")},
	}
	apiDER, err := x509.CreateCertificate(rand.Reader, apiTmpl, ca, &apiKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.APICert, "CERTIFICATE", apiDER); err != nil {
		return nil, err
	}
	apiKeyDER, _ := x509.MarshalECPrivateKey(apiKey)
	if err := writePEM(p.APIKey, "EC PRIVATE KEY", apiKeyDER); err != nil {
		return nil, err
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.SAKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return nil, err
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err := writePEM(p.SAPub, "PUBLIC KEY", pubDER); err != nil {
		return nil, err
	}

	tok := make([]byte, 16)
	rand.Read(tok)
	p.Token = hex.EncodeToString(tok)
	if err := os.WriteFile(p.TokenFile, fmt.Appendf(nil, "%s,admin,admin,system:masters\n", p.Token), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// WriteKubeconfig writes a kubeconfig for server with the admin token.
func (p *PKI) WriteKubeconfig(path, server string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: weft-e2e
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: weft-e2e
  context: {cluster: weft-e2e, user: admin}
current-context: weft-e2e
`, server, base64.StdEncoding.EncodeToString(p.caPEM), p.Token)
	return os.WriteFile(path, []byte(kc), 0o600)
}
